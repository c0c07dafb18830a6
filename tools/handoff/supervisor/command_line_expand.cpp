#include "supervisor/command_line_expand.hpp"

#include <optional>
#include <string_view>

namespace handoff::supervisor {
namespace {

bool name_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
bool name_char(char c) { return name_start(c) || (c >= '0' && c <= '9'); }

bool is_name(std::string_view s) {
  if (s.empty() || !name_start(s.front())) return false;
  for (const char c : s)
    if (!name_char(c)) return false;
  return true;
}

// One reference found in an argument: ${NAME} at [begin, end), or a whole-argument $NAME.
struct reference {
  std::size_t begin = 0, end = 0;
  std::string name;
  bool whole_word = false;
};

// The next "${NAME}" at or after `from` in `arg`, or the whole argument when it is "$NAME".
std::optional<reference> next_reference(std::string_view arg, std::size_t from) {
  if (from == 0 && arg.size() > 1 && arg.front() == '$' && is_name(arg.substr(1)))
    return reference{0, arg.size(), std::string(arg.substr(1)), true};
  for (std::size_t at = arg.find("${", from); at != std::string_view::npos;
       at = arg.find("${", at + 1)) {
    const auto close = arg.find('}', at + 2);
    if (close == std::string_view::npos) return std::nullopt;
    const std::string_view name = arg.substr(at + 2, close - at - 2);
    if (is_name(name)) return reference{at, close + 1, std::string(name), false};
  }
  return std::nullopt;
}

// "$$NAME" as a whole argument, or "$${NAME}" at `r.begin - 1`: the reference is escaped.
bool escaped(std::string_view arg, const reference& r) {
  if (r.whole_word) return false;  // "$$NAME" is not "$NAME": next_reference never matched it
  return r.begin > 0 && arg[r.begin - 1] == '$';
}

std::optional<std::string> value_of(const std::vector<std::string>& variables,
                                    const std::string& name) {
  // The last one wins, as in the environment the child gets (extra_environment replaces).
  std::optional<std::string> found;
  for (const auto& v : variables)
    if (v.size() > name.size() && v.compare(0, name.size(), name) == 0 && v[name.size()] == '=')
      found = v.substr(name.size() + 1);
  return found;
}

std::vector<std::string> split_at_whitespace(const std::string& value) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  for (;;) {
    pos = value.find_first_not_of(" \t\n", pos);
    if (pos == std::string::npos) return out;
    const auto end = value.find_first_of(" \t\n", pos);
    out.push_back(value.substr(pos, end == std::string::npos ? std::string::npos : end - pos));
    if (end == std::string::npos) return out;
    pos = end;
  }
}

}  // namespace

std::vector<std::string> expand_command_line(const std::vector<std::string>& argv,
                                             const std::vector<std::string>& variables) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (i == 0) {
      out.push_back(arg);
      continue;
    }
    // "$$NAME" alone: the escape of a whole-argument reference to a name we set.
    if (arg.size() > 2 && arg.compare(0, 2, "$$") == 0 &&
        is_name(std::string_view(arg).substr(2)) && value_of(variables, arg.substr(2))) {
      out.push_back(arg.substr(1));
      continue;
    }
    std::string result;
    std::size_t copied = 0;
    bool whole = false;
    for (auto r = next_reference(arg, 0); r; r = next_reference(arg, r->end)) {
      const auto value = value_of(variables, r->name);
      if (!value) continue;  // not ours: left as written
      if (r->whole_word) {
        for (auto& word : split_at_whitespace(*value)) out.push_back(std::move(word));
        whole = true;
        break;
      }
      if (escaped(arg, *r)) {
        result.append(arg, copied, r->begin - 1 - copied);  // drop one '$' of "$$"
        result.append(arg, r->begin, r->end - r->begin);
      } else {
        result.append(arg, copied, r->begin - copied);
        result += *value;
      }
      copied = r->end;
    }
    if (whole) continue;
    result.append(arg, copied, std::string::npos);
    out.push_back(std::move(result));
  }
  return out;
}

std::vector<std::string> command_line_references(const std::vector<std::string>& argv) {
  std::vector<std::string> names;
  for (std::size_t i = 1; i < argv.size(); ++i) {
    const std::string_view arg = argv[i];
    for (auto r = next_reference(arg, 0); r; r = next_reference(arg, r->end))
      if (!escaped(arg, *r)) names.push_back(r->name);
  }
  return names;
}

}  // namespace handoff::supervisor
