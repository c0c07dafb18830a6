// stub, being written
#include "handoff/notify.hpp"
