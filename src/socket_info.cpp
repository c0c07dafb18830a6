// stub, being written
#include "handoff/socket_info.hpp"
