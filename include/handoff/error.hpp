// Errors and results of handoff::core.
//
// Every function that touches the OS or parses user input returns a result<T>: either the
// value or an error that says what failed with its subject, e.g.
//   bind 127.0.0.1:8080: Address already in use
//   address "foo:bar": port "bar" is not a number (expected PORT, HOST:PORT, [V6]:PORT, ...)
// No function of the core throws for a failure of the OS or of a peer; exceptions are left to
// setup boundaries and the CLI (see result::value()).
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace handoff {

// Failures that are not an errno: malformed input and misbehaving peers.
enum class errc {
  invalid_address = 1,  // an address string that does not parse
  invalid_environment,  // LISTEN_* or NOTIFY_SOCKET that is malformed
  invalid_message,      // a notify datagram that is not a valid message
  timed_out,            // a wait that reached its deadline
  child_failed,         // a spawned process that exited or was killed
  unsupported,          // a well-formed request that this build cannot honour
};

const std::error_category& handoff_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), handoff_category()};
}

}  // namespace handoff

template <>
struct std::is_error_code_enum<handoff::errc> : std::true_type {};

namespace handoff {

class error {
 public:
  error(std::error_code code, std::string context) : code_(code), context_(std::move(context)) {}

  // An errno error: "<context>: <strerror(err)>".
  static error from_errno(int err, std::string context) {
    return {std::error_code(err, std::system_category()), std::move(context)};
  }
  // A handoff error whose context is the whole message.
  static error make(errc e, std::string message) {
    return {make_error_code(e), std::move(message)};
  }

  const std::error_code& code() const noexcept { return code_; }
  const std::string& context() const noexcept { return context_; }

  // The sentence for a user: the context, and the errno text for OS errors.
  std::string message() const {
    if (code_.category() == handoff_category()) return context_;
    return context_ + ": " + code_.message();
  }

  bool operator==(errc e) const noexcept { return code_ == make_error_code(e); }
  bool operator==(std::errc e) const noexcept { return code_ == e; }  // by error_condition

 private:
  std::error_code code_;
  std::string context_;
};

// Thrown by result::value() on a result that holds an error.
class bad_result_access : public std::runtime_error {
 public:
  explicit bad_result_access(const error& e) : std::runtime_error(e.message()), error_(e) {}
  const handoff::error& error() const noexcept { return error_; }

 private:
  handoff::error error_;
};

// A value of type T or an error; a small stand-in for C++23's std::expected.
template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  result(handoff::error e)
      : v_(std::in_place_index<1>, std::move(e)) {}  // NOLINT: implicit by design

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return check(), std::get<0>(v_); }
  const T& value() const& { return check(), std::get<0>(v_); }
  T&& value() && { return check(), std::get<0>(std::move(v_)); }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const handoff::error& error() const& { return std::get<1>(v_); }

 private:
  void check() const {
    if (!has_value()) throw bad_result_access(std::get<1>(v_));
  }
  std::variant<T, handoff::error> v_;
};

template <>
class [[nodiscard]] result<void> {
 public:
  result() = default;
  result(handoff::error e) : e_(std::move(e)), ok_(false) {}  // NOLINT: implicit by design

  bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  void value() const {
    if (!ok_) throw bad_result_access(e_);
  }
  const handoff::error& error() const& { return e_; }

 private:
  handoff::error e_{std::error_code(), std::string()};
  bool ok_ = true;
};

}  // namespace handoff
