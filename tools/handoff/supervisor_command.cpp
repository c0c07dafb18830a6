// being written: handoff run | reload | status | stop
#include "commands.hpp"

namespace handoff::cli {
void add_supervisor_commands(CLI::App& app) {
  app.add_subcommand("run", "supervise an app, holding its sockets");
}
}  // namespace handoff::cli
