#include "date.hpp"

#include <time.h>

namespace handoff::http {

namespace {

void two_digits(char* out, int value) noexcept {
  out[0] = static_cast<char>('0' + value / 10);
  out[1] = static_cast<char>('0' + value % 10);
}

}  // namespace

void format_imf_fixdate(std::time_t t, char* out) noexcept {
  // Not strftime: its %a and %b follow the process's locale, the protocol's names do not.
  static constexpr char days[] = "SunMonTueWedThuFriSat";
  static constexpr char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  const char* day = days + 3 * tm.tm_wday;
  const char* month = months + 3 * tm.tm_mon;
  const int year = tm.tm_year + 1900;
  out[0] = day[0], out[1] = day[1], out[2] = day[2], out[3] = ',', out[4] = ' ';
  two_digits(out + 5, tm.tm_mday);
  out[7] = ' ', out[8] = month[0], out[9] = month[1], out[10] = month[2], out[11] = ' ';
  two_digits(out + 12, year / 100 % 100);
  two_digits(out + 14, year % 100);
  out[16] = ' ';
  two_digits(out + 17, tm.tm_hour);
  out[19] = ':';
  two_digits(out + 20, tm.tm_min);
  out[22] = ':';
  two_digits(out + 23, tm.tm_sec);  // 60 on a leap second, which IMF-fixdate allows
  out[25] = ' ', out[26] = 'G', out[27] = 'M', out[28] = 'T';
}

std::string_view http_date_now() noexcept {
  thread_local std::time_t formatted = -1;
  thread_local char text[imf_fixdate_size];
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  if (now.tv_sec != formatted) {
    format_imf_fixdate(now.tv_sec, text);
    formatted = now.tv_sec;
  }
  return {text, imf_fixdate_size};
}

}  // namespace handoff::http
