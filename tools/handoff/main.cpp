// handoff: zero-downtime restarts, measured. See `handoff --help`.
//
// Usage errors are one plain sentence on stderr and exit status 2: an unknown command names
// the commands, an unknown option is called that, and range and duration checks say what is
// allowed (commands.hpp). --version works at the top and after any command.
#include <fmt/core.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "commands.hpp"
#include "supervisor/state.hpp"

namespace {

constexpr const char* version = HANDOFF_VERSION_TEXT;

std::string command_names(CLI::App& app) {
  std::string names;
  for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

// The first argument names the command; CLI11 alone would only say "A subcommand is required"
// for a misspelt one.
bool command_is_known(CLI::App& app, int argc, char** argv, std::string& message) {
  if (argc < 2) {
    message = fmt::format("a command is required: {} (handoff --help)", command_names(app));
    return false;
  }
  const std::string first = argv[1];
  if (first == "--help" || first == "-h" || first == "--version") return true;  // CLI11's
  if (first.empty() || first[0] == '-') {
    message = fmt::format("unknown option {}: a command comes first: {} (handoff --help)", first,
                          command_names(app));
    return false;
  }
  for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; }))
    if (sub->check_name(first)) return true;
  message = fmt::format("unknown command \"{}\": the commands are {} (handoff --help)", first,
                        command_names(app));
  return false;
}

// What CLI11 left over, as the sentence a user expects: "run: unknown option --bogus".
std::string extras_message(CLI::App& app) {
  for (auto* sub : app.get_subcommands()) {
    std::vector<std::string> options, arguments;
    for (const auto& arg : sub->remaining(true)) {
      if (arg == "--") continue;
      (arg.size() > 1 && arg[0] == '-' ? options : arguments).push_back(arg);
    }
    if (!options.empty())
      return fmt::format("{}: unknown option {} (handoff {} --help)", sub->get_name(),
                         options.front(), sub->get_name());
    if (!arguments.empty())
      return fmt::format("{}: unexpected argument \"{}\" (handoff {} --help)", sub->get_name(),
                         arguments.front(), sub->get_name());
  }
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  // A supervisor about to exec this binary asks which of its states it can read (reexec.cpp).
  if (std::getenv(handoff::supervisor::env_probe) != nullptr) {
    fmt::print("handoff-reexec state {} {} {}\n", handoff::supervisor::state_version_min,
               handoff::supervisor::state_version, version);
    return 0;
  }
  CLI::App app{"handoff: zero-downtime restarts and deploys for network servers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version);
  handoff::cli::add_check_command(app);
  handoff::cli::add_supervisor_commands(app);
  for (auto* sub : app.get_subcommands([](CLI::App*) { return true; }))
    sub->set_version_flag("--version", version);
  std::string message;
  if (!command_is_known(app, argc, argv, message)) {
    fmt::print(stderr, "handoff: {}\n", message);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::RuntimeError& e) {
    return app.exit(e);  // a subcommand's own exit status, its message already printed
  } catch (const CLI::ExtrasError& e) {
    const std::string plain = extras_message(app);
    if (plain.empty()) return app.exit(e) == 0 ? 0 : 2;
    fmt::print(stderr, "handoff {}\n", plain);
    return 2;
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
