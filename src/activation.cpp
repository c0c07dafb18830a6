// stub, being written
#include "handoff/activation.hpp"
