// The MaskBench benchmark (guidance-ai/jsonschemabench, maskbench/) run the way its runner.py
// does: per schema, compile (time to first mask, TTFM, includes the first mask), then feed each
// test instance (json.dumps(data) with Python's default separators) token by token, computing
// the mask before every token (time between masks, TBM, includes accepting the token) and
// checking that the token is allowed. Valid instances must be accepted (and complete the
// grammar), invalid ones rejected at some token or left incomplete. Single thread.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "grammars/json_schema.h"
#include "grammars/tokenizer_index.h"

namespace agentrt::grammars {

using TokenizeFn = std::function<std::vector<int32_t>(std::string_view text)>;

struct MaskBenchOptions {
  size_t limit = 0;           // files to run (0 = all), taken in sorted name order
  size_t every = 1;           // take every n-th file (a spread-out subset)
  double timeout_ms = 60000;  // per schema, checked between tokens
  JsonSchemaOptions schema_options = [] {
    JsonSchemaOptions o;
    o.whitespace = JsonSchemaOptions::Whitespace::flexible;
    return o;
  }();
  std::ostream* log = nullptr;  // one line per failing schema when set
  // When set: one tab-separated line per schema (file, status, TTFM, tokens, max and total TBM,
  // in microseconds), to find the slow ones.
  std::ostream* per_schema = nullptr;
};

struct SchemaOutcome {
  enum class Status {
    kPassed,
    kCompileError,
    kValidationError,
    kInvalidationError,
    kTimeout,
    kCrash
  };
  std::string file;
  Status status = Status::kPassed;
  bool valid_rejected = false;    // a validation error
  bool invalid_accepted = false;  // an invalidation error
  std::string detail;
  double ttfm_us = 0;
  std::vector<double> tbm_us;
  size_t valid_tests = 0, invalid_tests = 0;
};

struct MaskBenchReport {
  size_t schemas = 0, passed = 0, compile_errors = 0, validation_errors = 0,
         invalidation_errors = 0, timeouts = 0, crashes = 0;
  size_t valid_tests = 0, invalid_tests = 0, tokens = 0;
  std::vector<double> ttfm_us, tbm_us;
  std::vector<SchemaOutcome> failures;

  void add(SchemaOutcome outcome);
  // The published MaskBench table plus the percentile table.
  std::string table() const;
};

// Sorted *.json paths of a MaskBench data folder; throws if it does not exist.
std::vector<std::string> list_maskbench_files(const std::string& dir);

// One MaskBench file (parsed JSON with "schema" and "tests").
SchemaOutcome run_maskbench_schema(const nlohmann::ordered_json& doc, const std::string& name,
                                   const std::shared_ptr<const TokenizerIndex>& tokenizer,
                                   const TokenizeFn& tokenize, const MaskBenchOptions& options);

MaskBenchReport run_maskbench(const std::vector<std::string>& files,
                              const std::shared_ptr<const TokenizerIndex>& tokenizer,
                              const TokenizeFn& tokenize, const MaskBenchOptions& options);

// Greedy longest-match tokenization over the index (a stand-in when no real tokenizer is at
// hand: always a valid token sequence, close to but not the same as BPE's).
std::vector<int32_t> longest_match_tokenize(const TokenizerIndex& tokenizer, std::string_view text);

}  // namespace agentrt::grammars
