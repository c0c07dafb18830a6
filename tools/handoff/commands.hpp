// The subcommands of `handoff`. Each family registers itself on the CLI11 app; its callback
// throws CLI::RuntimeError(exit_code) to end with a status other than 0, after printing one
// clear message to stderr. The checks below give CLI11 short messages for option values
// ("--rate: -5: must be 0 or more"), reported as usage errors (exit status 2) before any
// callback runs.
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <string>

#include "handoff/duration.hpp"

namespace handoff::cli {

// handoff check URL [OPTIONS]: load while restarting, every failure by class (check_command.cpp).
void add_check_command(CLI::App& app);
// handoff run | reload | status | stop: the supervisor and its control (supervisor_command.cpp).
void add_supervisor_commands(CLI::App& app);

// A duration as handoff/duration.hpp reads it ("500ms", "30s", "2m").
inline CLI::Validator duration_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        auto d = parse_duration(text);
        // The context alone: the sentence already says what is wrong, without strerror.
        return d ? std::string() : d.error().context();
      },
      "DURATION", "duration");
}

// A decimal number that is 0 or more (CLI11's NonNegativeNumber prints the range up to
// DBL_MAX, 300 digits).
inline CLI::Validator non_negative_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double v = 0;
        const char* end = text.data() + text.size();
        const auto [p, ec] = std::from_chars(text.data(), end, v);
        if (ec != std::errc() || p != end) return "\"" + text + "\" is not a number";
        return v >= 0 ? std::string() : text + ": must be 0 or more";
      },
      "NUMBER>=0", "non-negative");
}

}  // namespace handoff::cli
