// $PORT and friends in the app's arguments (supervisor/command_line_expand.hpp): systemd's rules
// for ExecStart=, limited to the variables handoff sets.
#include <gtest/gtest.h>

#include "supervisor/command_line_expand.hpp"

namespace handoff::supervisor {
namespace {

using args = std::vector<std::string>;

const std::vector<std::string> ours = {"PORT=8123", "HANDOFF_PORT_ADMIN=8124",
                                       "HANDOFF_GENERATION=3", "SPLIT=a  b"};

TEST(CommandLineExpand, WholeWordsAndBracedNamesOfOursAreExpanded) {
  EXPECT_EQ(expand_command_line({"uvicorn", "app:app", "--port", "$PORT"}, ours),
            (args{"uvicorn", "app:app", "--port", "8123"}));
  EXPECT_EQ(expand_command_line({"app", "--bind=127.0.0.1:${PORT}", "${HANDOFF_PORT_ADMIN}"}, ours),
            (args{"app", "--bind=127.0.0.1:8123", "8124"}));
  EXPECT_EQ(expand_command_line({"app", "${PORT}-${HANDOFF_GENERATION}"}, ours),
            (args{"app", "8123-3"}));
}

TEST(CommandLineExpand, AWholeWordSplitsAtWhitespaceABracedOneDoesNot) {
  EXPECT_EQ(expand_command_line({"app", "$SPLIT", "x"}, ours), (args{"app", "a", "b", "x"}));
  EXPECT_EQ(expand_command_line({"app", "${SPLIT}"}, ours), (args{"app", "a  b"}));
  EXPECT_EQ(expand_command_line({"app", "$SPLIT"}, {"SPLIT= "}), (args{"app"}));
}

TEST(CommandLineExpand, WhatIsNotOursOrNotSystemdsSyntaxIsLeftAlone) {
  const args kept = {"sh",    "-c",      "exec app --port $PORT; echo $$ ${HOME} $HOME",
                     "$HOME", "${HOME}", "--port=$PORT",
                     "$",     "${",      "${PORT",
                     "$1",    "${1}",    "$$"};
  EXPECT_EQ(expand_command_line(kept, ours), kept);
  EXPECT_EQ(expand_command_line({"$PORT", "${PORT}"}, ours), (args{"$PORT", "8123"}))
      << "argv[0], the program, is not expanded";
  EXPECT_EQ(expand_command_line({"app", "$PORT"}, {}), (args{"app", "$PORT"}))
      << "PORT not set by handoff: the app's own business";
}

TEST(CommandLineExpand, DoubleDollarEscapesANameOfOurs) {
  EXPECT_EQ(expand_command_line({"app", "$$PORT", "$${PORT}", "x$${PORT}${PORT}"}, ours),
            (args{"app", "$PORT", "${PORT}", "x${PORT}8123"}));
  EXPECT_EQ(expand_command_line({"app", "$$HOME", "$${HOME}"}, ours),
            (args{"app", "$$HOME", "$${HOME}"}));
}

TEST(CommandLineExpand, ReferencesAreListedForTheStartCheck) {
  EXPECT_EQ(command_line_references({"$PORT", "$HANDOFF_PORT_A", "x${PORT}", "$$PORT", "$${PORT}",
                                     "--p=$PORT", "${HOME}"}),
            (args{"HANDOFF_PORT_A", "PORT", "HOME"}));
}

}  // namespace
}  // namespace handoff::supervisor
