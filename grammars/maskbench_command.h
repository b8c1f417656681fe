// `agentrt grammar bench DIR [--limit N] [--every K] [--timeout-ms MS] [--tokenizer tokenizer.json]
// [--longest-match] [--per-schema FILE.tsv] [--verbose]` and bench_maskbench share this entry
// point.
#pragma once

#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "grammars/maskbench_runner.h"

namespace agentrt::grammars {

// Makes the instance tokenizer for a tokenizer.json path. grammars/ does not depend on the
// engine, so the caller plugs its BPE tokenizer in here (MaskBench tokenizes instances with the
// model's real tokenizer).
using TokenizerFactory = std::function<TokenizeFn(const std::string& tokenizer_json)>;

// `default_tokenizer_json` is used without --tokenizer; `make_tokenizer` (may be empty, or
// bypassed with --longest-match) replaces the longest-match stand-in. Prints the table to `out`,
// failures (with --verbose) to `err`. Returns the exit code; throws std::invalid_argument on bad
// arguments.
int run_maskbench_command(const std::vector<std::string>& args,
                          const std::string& default_tokenizer_json,
                          const TokenizerFactory& make_tokenizer, std::ostream& out,
                          std::ostream& err);

}  // namespace agentrt::grammars
