#include "handoff/error.hpp"

namespace handoff {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "handoff"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::invalid_address:
        return "invalid address";
      case errc::invalid_environment:
        return "invalid environment";
      case errc::invalid_message:
        return "invalid notify message";
      case errc::timed_out:
        return "timed out";
      case errc::child_failed:
        return "child process failed";
      case errc::unsupported:
        return "not supported";
    }
    return "unknown handoff error";
  }
};

}  // namespace

const std::error_category& handoff_category() noexcept {
  static const category instance;
  return instance;
}

}  // namespace handoff
