// The `agentrt logits` contract: raw little-endian float32 rows, one per position, matching the
// transformers golden logits in one prefill and through the cache in the fixture's chunks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "tests/cli/cli_test_support.h"

namespace {

using agentrt::testing::run_cli;

std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

double worst_row_error(const std::vector<float>& ours, const std::vector<float>& ref,
                       size_t vocab) {
  double worst = 0;
  for (size_t row = 0; row * vocab < ref.size(); ++row) {
    double num = 0, den = 0;
    for (size_t v = 0; v < vocab; ++v) {
      const double d = ours[row * vocab + v] - ref[row * vocab + v];
      num += d * d;
      den += static_cast<double>(ref[row * vocab + v]) * ref[row * vocab + v];
    }
    worst = std::max(worst, std::sqrt(num / den));
  }
  return worst;
}

TEST(LogitsCli, PrefillAndChunkedMatchTransformers) {
  const std::string dir = std::string(AGENTRT_SOURCE_DIR) + "/tests/engine/fixtures/golden/tiny_a";
  const std::string out = std::filesystem::temp_directory_path() /
                          ("agentrt_logits_" + std::to_string(::getpid()) + ".bin");
  ASSERT_EQ(run_cli("logits --model " + dir + " --ids " + dir + "/ids.json --out " + out).exit_code,
            0);
  const auto ref = read_floats(dir + "/logits_prefill.bin");
  auto ours = read_floats(out);
  ASSERT_EQ(ours.size(), ref.size());
  EXPECT_LT(worst_row_error(ours, ref, 512), 1e-4);
  std::ifstream schedule_in(dir + "/schedule.json");
  std::string chunks;
  for (int c : nlohmann::json::parse(schedule_in))
    chunks += (chunks.empty() ? "" : ",") + std::to_string(c);
  ASSERT_EQ(run_cli("logits --model " + dir + " --ids " + dir + "/ids.json --chunks " + chunks +
                    " --out " + out)
                .exit_code,
            0);
  ours = read_floats(out);
  EXPECT_LT(worst_row_error(ours, read_floats(dir + "/logits_chunked.bin"), 512), 1e-4);
  // Chunks that do not add up to the sequence length are an error.
  const auto bad = run_cli(
      "logits --model " + dir + " --ids " + dir + "/ids.json --chunks 3,4 --out " + out, "", true);
  EXPECT_EQ(bad.exit_code, 2);
  std::filesystem::remove(out);
}

}  // namespace
