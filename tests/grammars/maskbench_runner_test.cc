#include "grammars/maskbench_runner.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "grammars/hf_vocabulary.h"

namespace agentrt::grammars {
namespace {

// A small spread-out subset of MaskBench, EBNF from the JSON-Schema compiler, the real
// vocabulary and the longest-match tokenization (the full run is bench_maskbench).
TEST(MaskBenchRunner, Subset) {
  std::string dir = std::string(AGENTRT_SHARED_DATA) + "/maskbench";
  std::string tok = std::string(AGENTRT_HOME) + "/models/deepseek-v3-tokenizer/tokenizer.json";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no MaskBench data at " << dir;
  if (!std::filesystem::exists(tok)) GTEST_SKIP() << "no DeepSeek tokenizer at " << tok;
  auto index = TokenizerIndex::build(load_hf_vocabulary(tok));
  std::vector<std::string> files = list_maskbench_files(dir);
  ASSERT_GT(files.size(), 100u);
  MaskBenchOptions options;
  options.every = files.size() / 12;
  options.timeout_ms = 20000;
  MaskBenchReport report = run_maskbench(
      files, index, [&](std::string_view text) { return longest_match_tokenize(*index, text); },
      options);
  std::cout << report.table();
  for (const SchemaOutcome& f : report.failures) std::cout << f.file << ": " << f.detail << "\n";
  EXPECT_GE(report.schemas, 12u);
  // Crashes include a mask that disagrees with accept_token. Invalidation errors on this subset
  // come from JSON-Schema keywords the compiler approximates (e.g. oneOf as anyOf).
  EXPECT_EQ(report.crashes, 0u);
  EXPECT_EQ(report.timeouts, 0u);
  EXPECT_GE(report.passed * 10, report.schemas * 7);  // at least 70% on this subset
}

}  // namespace
}  // namespace agentrt::grammars
