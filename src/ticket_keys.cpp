#include "handoff/ticket_keys.hpp"

#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <string>

#include "handoff/decimal.hpp"
#include "sys.hpp"

namespace handoff {
namespace {

constexpr char hex_digits[] = "0123456789abcdef";

template <std::size_t N>
void put_hex(std::string& out, const std::array<unsigned char, N>& bytes) {
  for (unsigned char b : bytes) {
    out += hex_digits[b >> 4];
    out += hex_digits[b & 0xf];
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is not written by anyone, so not accepted either
}

template <std::size_t N>
bool get_hex(std::string_view text, std::array<unsigned char, N>& bytes) {
  if (text.size() != 2 * N) return false;
  for (std::size_t i = 0; i < N; ++i) {
    const int high = hex_value(text[2 * i]);
    const int low = hex_value(text[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    bytes[i] = static_cast<unsigned char>(high << 4 | low);
  }
  return true;
}

result<void> random_bytes(unsigned char* at, std::size_t size) {
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = ::getrandom(at + got, size - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return error::from_errno(errno, "getrandom");
    got += static_cast<std::size_t>(n);
  }
  return {};
}

result<std::string> new_key_line() {
  ticket_key key;
  key.created = static_cast<std::int64_t>(std::time(nullptr));
  if (auto r = random_bytes(key.name.data(), key.name.size()); !r) return r.error();
  if (auto r = random_bytes(key.aes.data(), key.aes.size()); !r) return r.error();
  if (auto r = random_bytes(key.hmac.data(), key.hmac.size()); !r) return r.error();
  std::string line = std::to_string(key.created) + ' ';
  put_hex(line, key.name);
  line += ' ';
  put_hex(line, key.aes);
  line += ' ';
  put_hex(line, key.hmac);
  line += '\n';
  return line;
}

error malformed(const std::string& why) {
  return error::make(errc::invalid_environment,
                     std::string(ticket_keys_name) + " file malformed: " + why);
}

}  // namespace

result<std::vector<ticket_key>> parse_ticket_keys(std::string_view text) {
  if (text.size() > ticket_keys_max_bytes)
    return malformed(std::to_string(text.size()) + " bytes, more than " +
                     std::to_string(ticket_keys_max_bytes));
  if (!text.starts_with(ticket_keys_header)) {
    const std::string_view first = text.substr(0, std::min<std::size_t>(text.find('\n'), 40));
    return malformed("the first line is not \"handoff-tls-keys 1\" (version 1 of the format)" +
                     std::string(first.empty() ? "" : ": it reads \"") +
                     (first.empty() ? "" : std::string(first) + "\""));
  }
  text.remove_prefix(ticket_keys_header.size());
  std::vector<ticket_key> keys;
  int line_number = 1;
  while (!text.empty()) {
    const auto end = text.find('\n');
    if (end == std::string_view::npos) break;  // a key being appended: not there yet
    ++line_number;
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end + 1);
    const std::string where = "line " + std::to_string(line_number) + ": ";
    const auto space = line.find(' ');
    if (space == std::string_view::npos) return malformed(where + "not \"CREATED NAME AES HMAC\"");
    ticket_key key;
    const auto created = parse_decimal<std::int64_t>(line.substr(0, space), 0);
    if (!created) return malformed(where + "the creation time is not a number");
    key.created = *created;
    line.remove_prefix(space + 1);
    const std::string_view name = line.substr(0, line.find(' '));
    if (!get_hex(name, key.name)) return malformed(where + "the key name is not 32 hex digits");
    line.remove_prefix(std::min(line.size(), name.size() + 1));
    const std::string_view aes = line.substr(0, line.find(' '));
    if (!get_hex(aes, key.aes)) return malformed(where + "the AES key is not 64 hex digits");
    line.remove_prefix(std::min(line.size(), aes.size() + 1));
    if (!get_hex(line, key.hmac)) return malformed(where + "the HMAC key is not 64 hex digits");
    keys.push_back(key);
  }
  if (keys.empty()) return malformed("no key");
  return keys;
}

result<std::vector<ticket_key>> read_ticket_keys(int fd) {
  std::string text;
  char buf[8192];
  for (;;) {
    const auto at = static_cast<off_t>(text.size());
    const ssize_t n = sys::retry_eintr([&] { return ::pread(fd, buf, sizeof buf, at); });
    if (n < 0)
      return error::from_errno(
          errno, "read " + std::string(ticket_keys_name) + " fd " + std::to_string(fd));
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > ticket_keys_max_bytes) break;
  }
  return parse_ticket_keys(text);
}

result<void> append_ticket_key(int fd) {
  auto line = new_key_line();
  if (!line) return line.error();
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    return error::from_errno(errno, "fstat " + std::string(ticket_keys_name));
  // pwrite at the end, not write: the file offset is shared with every generation holding the
  // fd. One call, so that a reader sees the line whole or without its '\n' (then ignores it).
  const ssize_t n = sys::retry_eintr(
      [&] { return ::pwrite(fd, line->data(), line->size(), static_cast<off_t>(st.st_size)); });
  if (n < 0) return error::from_errno(errno, "write " + std::string(ticket_keys_name));
  if (static_cast<std::size_t>(n) != line->size())
    return error::make(errc::unsupported, "write " + std::string(ticket_keys_name) + ": short");
  return {};
}

result<unique_fd> create_ticket_keys() {
  unique_fd fd(::memfd_create(std::string(ticket_keys_name).c_str(), MFD_CLOEXEC));
  if (!fd) return error::from_errno(errno, "memfd_create " + std::string(ticket_keys_name));
  const std::string_view header = ticket_keys_header;
  const ssize_t n =
      sys::retry_eintr([&] { return ::pwrite(fd.get(), header.data(), header.size(), 0); });
  if (n != static_cast<ssize_t>(header.size()))
    return error::from_errno(errno, "write " + std::string(ticket_keys_name));
  if (auto r = append_ticket_key(fd.get()); !r) return r.error();
  return fd;
}

}  // namespace handoff
