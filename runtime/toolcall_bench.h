// `agentrt bench toolcalls`: one assistant turn per BFCL entry (JSON Lines with `question` and
// `function`), counting calls that parse and validate against their schemas. With a random
// model nothing is learned, so the difference between --unconstrained and the default is the
// grammar's doing.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "runtime/backend.h"

namespace agentrt {

struct ToolcallBenchOptions {
  bool constrained = true;
  ToolChoice tool_choice = ToolChoice{ToolChoice::Mode::required, ""};
  int max_tokens = 512;
  int limit_per_file = 0;  // 0: all entries
  uint64_t seed = 1;
  GenerationRequest::ValueBounds bounds{16, 3, 1000000};
};

struct ToolcallFileResult {
  std::string file;
  int entries = 0;
  int called = 0;  // the turn produced at least one parseable tool call
  int valid = 0;   // every call names a declared tool and its arguments validate
  int errors = 0;  // entries whose tools could not be compiled into a grammar
  double seconds = 0;
};

std::vector<ToolcallFileResult> run_toolcall_bench(
    Backend& backend, const std::vector<std::filesystem::path>& files,
    const ToolcallBenchOptions& options,
    const std::function<void(const ToolcallFileResult&)>& on_file = {});

}  // namespace agentrt
