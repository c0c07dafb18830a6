// The subcommands of `handoff`. Each family registers itself on the CLI11 app; its callback
// throws CLI::RuntimeError(exit_code) to end with a status other than 0, after printing one
// clear message to stderr.
#pragma once

#include <CLI/CLI.hpp>

namespace handoff::cli {

// handoff check URL [OPTIONS]: load while restarting, every failure by class (check_command.cpp).
void add_check_command(CLI::App& app);
// handoff run | reload | status | stop: the supervisor and its control (supervisor_command.cpp).
void add_supervisor_commands(CLI::App& app);

}  // namespace handoff::cli
