// A stand-in for libFuzzer's main in builds without it (GCC): replays every file of the seed
// corpus given on the command line, then a fixed number of deterministic mutations of each
// (byte flips, insertions of separator bytes, truncations), so the parsers meet malformed input
// under the sanitizers of every build. Real coverage-guided fuzzing: configure with the `fuzz`
// preset (clang, libFuzzer).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

void run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
}

std::string mutate(std::string s, std::mt19937& rng) {
  static const char interesting[] = {'\0', '\n', ':', '=', '@', '[', ']', '/', '-', '9', '\xff'};
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < edits; ++i) {
    const std::size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 4) {
      case 0:
        if (at < s.size()) s[at] = static_cast<char>(s[at] ^ (1u << (rng() % 8)));
        break;
      case 1:
        s.insert(at, 1, interesting[rng() % sizeof interesting]);
        break;
      case 2:
        s.resize(at);
        break;
      default:
        if (!s.empty()) s.insert(at, s.substr(rng() % s.size(), 1 + rng() % 8));
        break;
    }
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> seeds;
  for (int i = 1; i < argc; ++i) {
    for (const auto& entry : std::filesystem::directory_iterator(argv[i])) {
      if (!entry.is_regular_file() || entry.path().filename().string().front() == '.') continue;
      std::ifstream in(entry.path(), std::ios::binary);
      seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
  }
  seeds.emplace_back();
  std::mt19937 rng(20261122);  // fixed: a failure here reproduces on every run
  constexpr int mutations_per_seed = 2000;
  std::size_t runs = 0;
  for (const auto& seed : seeds) {
    run(seed);
    std::string current = seed;
    for (int i = 0; i < mutations_per_seed; ++i, ++runs) {
      current = (i % 16 == 0) ? seed : mutate(current, rng);
      run(current);
    }
  }
  std::printf("replayed %zu seeds and %zu mutations\n", seeds.size(), runs);
  return 0;
}
