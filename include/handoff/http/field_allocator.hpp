// handoff::http::field_allocator: the allocator of the header fields and the response body of
// handoff::http's request and response types, so that a keep-alive connection in steady state
// makes no heap allocation per request.
//
// Beast's basic_fields allocates one block per field and one for the request's method and
// target; a response's body_string one for its bytes. This allocator is stateless (every
// instance is equal, as std::allocator's): a block comes from a small per-thread cache of
// blocks freed earlier, by size class (multiples of 64 bytes up to 4 KiB), and goes back to the
// cache of the thread that frees it. A block is plain operator-new memory of its class's size,
// so freeing it on another thread than the one that allocated it is fine. Larger blocks, a cache
// miss, and a full cache go to operator new and delete. Each thread keeps at most 64 KiB of
// blocks per class up to 4 KiB and 64 blocks of each larger one (under 12 MiB in all); they are
// released when the thread exits. The server
// takes its connections and their read buffers from the same cache (classes of 1 KiB up to
// 16 KiB), so that a client opening a connection per request costs no malloc either.
#pragma once

#include <cstddef>
#include <new>
#include <type_traits>

namespace handoff::http {

namespace field_pool {
void* allocate(std::size_t bytes);
void deallocate(void* p, std::size_t bytes) noexcept;
}  // namespace field_pool

template <class T>
class field_allocator {
 public:
  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "blocks have new's alignment");
  using value_type = T;
  using is_always_equal = std::true_type;
  using propagate_on_container_move_assignment = std::true_type;

  field_allocator() noexcept = default;
  template <class U>
  field_allocator(const field_allocator<U>&) noexcept {}  // NOLINT: converting, as std's

  T* allocate(std::size_t n) {
    if (n > std::size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(field_pool::allocate(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { field_pool::deallocate(p, n * sizeof(T)); }

  template <class U>
  bool operator==(const field_allocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace handoff::http
