// handoff: zero-downtime restarts, measured. See `handoff --help`.
#include <fmt/core.h>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"handoff: zero-downtime restarts and deploys for network servers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "handoff 0.1.0");
  handoff::cli::add_check_command(app);
  handoff::cli::add_supervisor_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::RuntimeError& e) {
    return app.exit(e);  // a subcommand's own exit status, its message already printed
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2, as the commands document.
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "handoff: {}\n", e.what());
    return 1;
  }
  return 0;
}
