// stub, being written
#include "handoff/notify_receiver.hpp"
