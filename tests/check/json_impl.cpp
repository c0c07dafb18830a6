// Boost.JSON, header-only: its implementation, once per test binary (see json.hpp).
#include <boost/json/src.hpp>  // NOLINT(misc-include-cleaner)
