// Boost.JSON, header-only: its implementation, compiled once here for the command and for
// everything that links handoff_check_lib (the tests included).
#include <boost/json/src.hpp>  // NOLINT(misc-include-cleaner)
