#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "handoff/fd.hpp"
#include "test_support.hpp"

namespace handoff {
namespace {

TEST(UniqueFd, ClosesOnDestructionAndMoves) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd write_end(p[1]);
  {
    unique_fd read_end(p[0]);
    unique_fd moved(std::move(read_end));
    EXPECT_FALSE(read_end.valid());  // NOLINT(bugprone-use-after-move): the moved-from state
    EXPECT_EQ(moved.get(), p[0]);
    EXPECT_TRUE(fd_is_open(p[0]));
  }
  EXPECT_FALSE(fd_is_open(p[0]));
  unique_fd other;
  other = std::move(write_end);
  EXPECT_EQ(other.get(), p[1]);
  int raw = other.release();
  EXPECT_FALSE(other.valid());
  EXPECT_TRUE(fd_is_open(raw));
  ::close(raw);
}

TEST(UniqueFd, DuplicateIsCloexecAndAboveMinimum) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd a(p[0]), b(p[1]);
  auto dup = a.duplicate(100);
  ASSERT_TRUE(dup) << dup.error().message();
  EXPECT_GE(dup->get(), 100);
  EXPECT_TRUE(::fcntl(dup->get(), F_GETFD) & FD_CLOEXEC);
}

TEST(UniqueFd, DuplicateOfClosedFdNamesIt) {
  unique_fd none(987654);
  auto dup = none.duplicate();
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().message(), "dup fd 987654: Bad file descriptor");
  (void)none.release();
}

TEST(UniqueFd, CloexecAndNonblockingFlags) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  unique_fd a(p[0]), b(p[1]);
  EXPECT_FALSE(::fcntl(a.get(), F_GETFD) & FD_CLOEXEC);
  ASSERT_TRUE(set_cloexec(a.get()));
  EXPECT_TRUE(::fcntl(a.get(), F_GETFD) & FD_CLOEXEC);
  ASSERT_TRUE(set_cloexec(a.get(), false));
  EXPECT_FALSE(::fcntl(a.get(), F_GETFD) & FD_CLOEXEC);
  ASSERT_TRUE(set_nonblocking(a.get()));
  EXPECT_TRUE(::fcntl(a.get(), F_GETFL) & O_NONBLOCK);
  auto bad = set_cloexec(-1);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error(), std::errc::bad_file_descriptor);
}

TEST(Result, ValueOfAnErrorThrowsWithTheMessage) {
  result<int> r = error::make(errc::invalid_address, "address \"x\": bad");
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error() == errc::invalid_address);
  try {
    (void)r.value();
    FAIL() << "value() of an error must throw";
  } catch (const bad_result_access& e) {
    EXPECT_STREQ(e.what(), "address \"x\": bad");
  }
  result<void> ok;
  EXPECT_TRUE(ok);
  EXPECT_NO_THROW(ok.value());
}

}  // namespace
}  // namespace handoff
