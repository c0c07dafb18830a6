// The per-thread block cache behind field_allocator (see its header).
#include <array>
#include <new>

#include "handoff/http/field_allocator.hpp"

// Under AddressSanitizer a cached block is poisoned, so that a use after free of a field is
// still reported although the block was not freed.
#if defined(__SANITIZE_ADDRESS__)
#define HANDOFF_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HANDOFF_ASAN 1
#endif
#endif
#ifdef HANDOFF_ASAN
#include <sanitizer/asan_interface.h>
#define HANDOFF_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define HANDOFF_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define HANDOFF_POISON(p, n) ((void)(p), (void)(n))
#define HANDOFF_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace handoff::http::field_pool {

namespace {

// Classes of 64 bytes up to 4 KiB (fields, bodies, connections), then of 1 KiB up to 16 KiB
// (a connection's read buffer: 8 KiB as a rule).
constexpr std::size_t granule = 64;
constexpr std::size_t small_classes = 64;  // 64 .. 4096 bytes
constexpr std::size_t large_granule = 1024;
constexpr std::size_t classes = small_classes + 12;  // then 5 KiB .. 16 KiB
constexpr std::size_t small_limit = small_classes * granule;
constexpr std::size_t limit =
    (classes - small_classes + small_limit / large_granule) * large_granule;

constexpr std::size_t class_size(std::size_t k) noexcept {
  return k < small_classes ? (k + 1) * granule
                           : (k - small_classes + 1) * large_granule + small_limit;
}
// At most 64 KiB of blocks per small class (1024 of 64 bytes, 16 of 4 KiB): enough for the
// fields and bodies of every response in flight on a thread serving a few hundred keep-alive
// connections at once (each holds several fields of one class while it writes), and for the
// connections opened and closed at once when clients open one per request. At most 64 blocks
// per large class (512 KiB of read buffers): the connections that wait for their first
// request at once. Under 12 MiB in all.
constexpr std::size_t max_cached(std::size_t k) noexcept {
  return k < small_classes ? std::size_t{64} * 1024 / class_size(k) : 64;
}

// A cached block's first bytes link it to the next one of its class.
struct free_block {
  free_block* next;
};

struct cache {
  std::array<free_block*, classes> heads{};
  std::array<std::size_t, classes> counts{};

  cache() noexcept;
  ~cache();
  cache(const cache&) = delete;
  cache& operator=(const cache&) = delete;
};

// Trivially destructible, so still readable while (and after) the thread's cache is destroyed:
// a message that outlives its thread's cache uses operator new and delete.
enum class cache_state : unsigned char { unborn, alive, dead };
thread_local cache_state state = cache_state::unborn;

cache::cache() noexcept { state = cache_state::alive; }

cache::~cache() {
  state = cache_state::dead;
  for (auto* head : heads) {
    while (head != nullptr) {
      HANDOFF_UNPOISON(head, sizeof(free_block));
      auto* next = head->next;
      ::operator delete(head);
      head = next;
    }
  }
}

cache& this_thread_cache() {
  thread_local cache c;
  return c;
}

// 0..64 -> 0, 65..128 -> 1, ... 4096 -> 63, 4097..5120 -> 64, ... 16384 -> 75; larger:
// `classes`, not cached.
std::size_t class_of(std::size_t bytes) noexcept {
  if (bytes > limit) return classes;
  if (bytes > small_limit) return small_classes + (bytes - small_limit - 1) / large_granule;
  return bytes == 0 ? 0 : (bytes - 1) / granule;
}

}  // namespace

void* allocate(std::size_t bytes) {
  const std::size_t k = class_of(bytes);
  if (k >= classes) return ::operator new(bytes);
  // Every block of a class has the class's full size, wherever it came from: any thread may
  // cache it and hand it out for any size of the class.
  if (state == cache_state::dead) return ::operator new(class_size(k));
  auto& c = this_thread_cache();
  if (free_block* b = c.heads[k]) {
    HANDOFF_UNPOISON(b, class_size(k));
    c.heads[k] = b->next;
    --c.counts[k];
    return b;
  }
  return ::operator new(class_size(k));
}

void deallocate(void* p, std::size_t bytes) noexcept {
  if (p == nullptr) return;
  const std::size_t k = class_of(bytes);
  if (k >= classes || state != cache_state::alive) {
    ::operator delete(p);
    return;
  }
  auto& c = this_thread_cache();
  if (c.counts[k] >= max_cached(k)) {
    ::operator delete(p);
    return;
  }
  auto* b = static_cast<free_block*>(p);
  b->next = c.heads[k];
  c.heads[k] = b;
  ++c.counts[k];
  HANDOFF_POISON(b, class_size(k));
}

}  // namespace handoff::http::field_pool
