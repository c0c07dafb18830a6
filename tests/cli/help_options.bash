# Shared by tests/cli/man_pages and tests/cli/completion: what `handoff ... --help` lists.
# CLI11 prints an option as "  -l,--listen TEXT ...  description": the names, then, for an
# option that takes a value, one space and its type; a flag's description follows after the
# padding.

# help_options TEXT: one line per option name, "NAME value" or "NAME flag".
help_options() {
  awk '/^Options:/ { on = 1; next }
       /^[A-Z][A-Za-z ]*:/ { on = 0 }
       on && /^  -/ {
         line = substr($0, 3); names = line; sub(/ .*/, "", names)
         kind = substr(line, length(names) + 1) ~ /^ [A-Z]/ ? "value" : "flag"
         n = split(names, parts, ",")
         for (i = 1; i <= n; i++) print parts[i], kind
       }' <<<"$1" | sort -u
}

# help_commands TEXT: the subcommands of `handoff --help`, one a line.
help_commands() {
  awk '/^Subcommands:/ { on = 1; next } /^[A-Z][A-Za-z ]*:/ { on = 0 }
       on && /^  [a-z]/ { print $1 }' <<<"$1" | sort -u
}

# same_lines WHAT EXPECTED ACTUAL: 0 when both lists hold the same lines, else prints what
# differs (< only in EXPECTED, > only in ACTUAL) and returns 1.
same_lines() {
  local what=$1 diff
  diff=$(diff <(sort -u <<<"$2" | sed '/^$/d') <(sort -u <<<"$3" | sed '/^$/d') | grep '^[<>]')
  [[ -z $diff ]] && return 0
  echo "$what:"
  echo "  ${diff//$'\n'/$'\n'  }"
  return 1
}
