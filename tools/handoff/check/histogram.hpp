// A latency histogram in microseconds with bounded relative error, in the manner of
// HdrHistogram: values below 128 µs are exact, above that each power of two is split into 64
// buckets (at most 1/64 ≈ 1.6 % too high). Fixed size, no allocation per value; merges by
// adding counts. Percentiles are by nearest rank: the smallest recorded bucket that holds at
// least q % of the values, reported as the bucket's upper bound but never above the exact max.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>

namespace handoff::check {

class histogram {
 public:
  static constexpr int exact_limit = 128;  // values below are their own bucket
  static constexpr int sub_buckets = 64;
  static constexpr int bucket_count = exact_limit + (32 - 7) * sub_buckets;

  static int bucket_of(std::uint32_t v) noexcept {
    if (v < exact_limit) return static_cast<int>(v);
    const int e = std::bit_width(v) - 1;  // 7..31
    const int sub = static_cast<int>((v >> (e - 6)) & (sub_buckets - 1));
    return exact_limit + (e - 7) * sub_buckets + sub;
  }
  // The largest value that falls into bucket `b`.
  static std::uint64_t bucket_high(int b) noexcept {
    if (b < exact_limit) return static_cast<std::uint64_t>(b);
    const int e = (b - exact_limit) / sub_buckets + 7;
    const std::uint64_t sub = static_cast<std::uint64_t>((b - exact_limit) % sub_buckets);
    const std::uint64_t low = (std::uint64_t{1} << e) | (sub << (e - 6));
    return low + (std::uint64_t{1} << (e - 6)) - 1;
  }

  void record(std::uint32_t micros) noexcept {
    ++counts_[static_cast<std::size_t>(bucket_of(micros))];
    ++count_;
    sum_ += micros;
    max_ = std::max(max_, micros);
    min_ = count_ == 1 ? micros : std::min(min_, micros);
  }
  void merge(const histogram& other) noexcept {
    if (other.count_ == 0) return;
    for (std::size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
    min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  std::uint64_t count() const noexcept { return count_; }
  std::uint32_t max() const noexcept { return max_; }
  std::uint32_t min() const noexcept { return min_; }
  double mean() const noexcept {
    return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_);
  }

  // q in [0, 100]; 0 when empty.
  std::uint64_t percentile(double q) const noexcept {
    if (count_ == 0) return 0;
    q = std::clamp(q, 0.0, 100.0);
    // The epsilon keeps 99.9 % of 1000 at rank 999, not 1000 (0.999 * 1000 > 999 in binary).
    auto rank =
        static_cast<std::uint64_t>(std::ceil(q / 100.0 * static_cast<double>(count_) - 1e-9));
    rank = std::clamp<std::uint64_t>(rank, 1, count_);
    std::uint64_t seen = 0;
    for (int b = 0; b < bucket_count; ++b) {
      seen += counts_[static_cast<std::size_t>(b)];
      if (seen >= rank) return std::min<std::uint64_t>(bucket_high(b), max_);
    }
    return max_;
  }

 private:
  std::array<std::uint64_t, bucket_count> counts_{};
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint32_t max_ = 0;
  std::uint32_t min_ = 0;
};

}  // namespace handoff::check
