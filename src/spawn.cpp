// stub, being written
#include "handoff/spawn.hpp"
