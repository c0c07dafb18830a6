// $NAME and ${NAME} in the app's arguments, as systemd expands ExecStart= (systemd.service(5),
// "Command lines"), for the variables handoff sets for a generation only ($PORT,
// $HANDOFF_PORT_<NAME>, $HANDOFF_GENERATION, $WATCHDOG_USEC): `-- uvicorn --port $PORT` needs
// no `sh -c`.
//
//   ${NAME} anywhere in an argument: the value, inside that argument.
//   $NAME as a whole argument: the value split at whitespace (zero or more arguments).
//   $NAME inside a longer argument is left alone (systemd's rule; write ${NAME} there).
//   $$ before a name that would be expanded: a literal $ ("$${PORT}" gives "${PORT}").
//   Every other $ stays as it is: names handoff does not set (the app's environment is the
//   app's own), and a shell's $$ in `sh -c '...'` (systemd turns every $$ into $).
//   argv[0], the program, is not expanded.
#pragma once

#include <string>
#include <vector>

namespace handoff::supervisor {

// `variables`: "KEY=VALUE" as the child's environment gets them.
std::vector<std::string> expand_command_line(const std::vector<std::string>& argv,
                                             const std::vector<std::string>& variables);

// The names that argv refers to by that syntax, whether set or not (argv[0] and escaped ones
// excepted): to refuse at start a $PORT that the chosen mode never sets.
std::vector<std::string> command_line_references(const std::vector<std::string>& argv);

}  // namespace handoff::supervisor
