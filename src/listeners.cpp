// stub, being written
#include "handoff/listeners.hpp"
