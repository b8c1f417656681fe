// `agentrt grammar bench DIR [--limit N] [--every K] [--timeout-ms MS] [--tokenizer tokenizer.json]
// [--verbose]` and bench_maskbench share this entry point.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include "grammars/maskbench_runner.h"

namespace agentrt::grammars {

// `default_tokenizer_json` is used without --tokenizer; `tokenize` (may be empty) replaces the
// longest-match stand-in. Prints the table to `out`, failures (with --verbose) to `err`.
// Returns the exit code; throws std::invalid_argument on bad arguments.
int run_maskbench_command(const std::vector<std::string>& args,
                          const std::string& default_tokenizer_json, const TokenizeFn& tokenize,
                          std::ostream& out, std::ostream& err);

}  // namespace agentrt::grammars
