// being written: handoff check
#include "commands.hpp"

namespace handoff::cli {
void add_check_command(CLI::App& app) {
  app.add_subcommand("check", "measure a restart under load");
}
}  // namespace handoff::cli
