// stub, being written
#include "handoff/address.hpp"
