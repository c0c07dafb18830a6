#include <gtest/gtest.h>

#include <cstdint>

#include "handoff/decimal.hpp"

namespace handoff {
namespace {

TEST(ParseDecimal, AcceptsPlainDigitsWithinRange) {
  EXPECT_EQ(parse_decimal<int>("0"), 0);
  EXPECT_EQ(parse_decimal<int>("42"), 42);
  EXPECT_EQ(parse_decimal<int>("007"), 7);
  EXPECT_EQ(parse_decimal<std::uint16_t>("65535"), 65535);
  EXPECT_EQ(parse_decimal<int>("5", 1, 5), 5);
}

TEST(ParseDecimal, RefusesEverythingElse) {
  for (const char* bad : {"", " 1", "1 ", "+1", "-1", "1x", "0x10", "1.5", "1e3", "١"})
    EXPECT_FALSE(parse_decimal<int>(bad)) << bad;
  EXPECT_FALSE(parse_decimal<std::uint16_t>("65536"));
  EXPECT_FALSE(parse_decimal<std::int64_t>("99999999999999999999"));
  EXPECT_FALSE(parse_decimal<int>("0", 1, 5));
  EXPECT_FALSE(parse_decimal<int>("6", 1, 5));
}

}  // namespace
}  // namespace handoff
