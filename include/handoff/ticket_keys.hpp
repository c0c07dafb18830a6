// TLS session-ticket keys shared by every generation of a server, so that a client resumes its
// session across a restart instead of paying for a full handshake.
//
// The keys live in a memfd made once by a holder that outlives generations (the `handoff run`
// supervisor, or the self-upgrader chain, kept in systemd's fd store under systemd). Each
// generation inherits it by LISTEN_FDS under the reserved name `handoff-tls-keys`
// (ticket_keys_name); it is not a socket, and socket_set / upgrader never serve or close it as
// one. The holder appends a key every rotation period; the server re-reads the file and
// encrypts new tickets with the newest key, and decrypts with it and the one before (so a
// ticket stays valid for at least one period, longer than its lifetime).
//
// The file (docs/protocol.md), text, oldest key first:
//   handoff-tls-keys 1\n
//   <created: unix seconds> <name: 32 hex> <aes-256 key: 64 hex> <hmac-sha256 key: 64 hex>\n
//   ...
// Invariants: the holder only appends, each key line with one write(2) at the end of the file;
// readers use pread(2) (the file offset is shared by every holder of the fd) and ignore a last
// line that has no '\n' yet (a write in progress). Any other deviation makes the whole file
// malformed: the reader says why, and a server falls back to keys of its own.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string_view>
#include <vector>

#include "handoff/error.hpp"
#include "handoff/fd.hpp"

namespace handoff {

// The LISTEN_FDNAMES / FDNAME= name of the keys memfd. Reserved: no socket may use it.
inline constexpr std::string_view ticket_keys_name = "handoff-tls-keys";
// The first line of the file: its format and version.
inline constexpr std::string_view ticket_keys_header = "handoff-tls-keys 1\n";
// The default rotation period: a new encryption key every 12 hours.
inline constexpr std::chrono::seconds ticket_key_rotation{12 * 3600};
// A larger file is malformed (a key line is about 175 bytes: 1 MiB is 16 years of rotations at 12
// h).
inline constexpr std::size_t ticket_keys_max_bytes = std::size_t{1} << 20;

struct ticket_key {
  std::int64_t created = 0;              // CLOCK_REALTIME, seconds
  std::array<unsigned char, 16> name{};  // sent in the ticket, picks the key to decrypt
  std::array<unsigned char, 32> aes{};   // AES-256-CBC
  std::array<unsigned char, 32> hmac{};  // HMAC-SHA256
};

// A new memfd (close-on-exec) holding the header and one fresh key.
result<unique_fd> create_ticket_keys();
// Appends a fresh key (random bytes from getrandom(2)) to the file `fd`.
result<void> append_ticket_key(int fd);
// Every key of the file, oldest first; an error saying what is malformed (the line, the field).
result<std::vector<ticket_key>> read_ticket_keys(int fd);
// The same, from the bytes of a file (for tests and fuzzing).
result<std::vector<ticket_key>> parse_ticket_keys(std::string_view text);

}  // namespace handoff
