#include "runtime/toolcall_bench.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include "tools/json_schema_validator.h"

namespace agentrt {

std::vector<ToolcallFileResult> run_toolcall_bench(
    Backend& backend, const std::vector<std::filesystem::path>& files,
    const ToolcallBenchOptions& options,
    const std::function<void(const ToolcallFileResult&)>& on_file) {
  std::vector<ToolcallFileResult> results;
  for (const auto& file : files) {
    std::ifstream in(file);
    if (!in) throw std::runtime_error(file.string() + ": cannot open");
    ToolcallFileResult r;
    r.file = file.filename().string();
    const auto start = std::chrono::steady_clock::now();
    std::string line;
    for (int line_no = 1; std::getline(in, line); ++line_no) {
      if (line.empty()) continue;
      if (options.limit_per_file > 0 && r.entries >= options.limit_per_file) break;
      nlohmann::ordered_json entry;
      try {
        entry = nlohmann::ordered_json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(file.string() + ":" + std::to_string(line_no) +
                                 ": not JSON: " + e.what());
      }
      if (!entry.contains("question") || !entry.contains("function")) {
        throw std::runtime_error(file.string() + ":" + std::to_string(line_no) +
                                 ": needs 'question' and 'function'");
      }
      GenerationRequest request;
      // BFCL questions: a list of turns, each a list of messages; the first turn is used.
      nlohmann::json turn = nlohmann::json::parse(entry["question"].dump());
      if (turn.is_array() && !turn.empty() && turn[0].is_array()) turn = turn[0];
      request.messages = chat::parse_messages(turn);
      request.tools = nlohmann::ordered_json::array();
      for (const auto& fn : entry["function"])
        request.tools.push_back({{"type", "function"}, {"function", fn}});
      request.tool_choice = options.tool_choice;
      request.constrained = options.constrained;
      request.max_tokens = options.max_tokens;
      request.sampling.temperature = 1.0f;
      request.sampling.seed = options.seed + static_cast<uint64_t>(line_no);
      request.value_bounds = options.bounds;
      ++r.entries;
      GenerationResult g;
      try {
        g = backend.generate(request, {}, nullptr, {});
      } catch (const std::exception& e) {
        ++r.errors;
        std::fprintf(stderr, "%s:%d: %s\n", r.file.c_str(), line_no, e.what());
        continue;
      }
      if (g.message.tool_calls.empty()) {
        if (std::getenv("AGENTRT_BENCH_VERBOSE"))
          std::fprintf(stderr, "%s:%d no call (%s): %s\n", r.file.c_str(), line_no,
                       std::string(to_string(g.finish)).c_str(), g.error.c_str());
        continue;
      }
      ++r.called;
      bool all_valid = true;
      for (const auto& call : g.message.tool_calls) {
        const nlohmann::ordered_json* schema = nullptr;
        for (const auto& fn : entry["function"]) {
          if (fn["name"] == call.name) schema = &fn["parameters"];
        }
        if (!schema) {
          all_valid = false;
          break;
        }
        try {
          const auto args = nlohmann::json::parse(call.arguments_json);
          const auto errors = tools::validate(nlohmann::json::parse(schema->dump()), args);
          if (!errors.empty()) {
            all_valid = false;
            if (std::getenv("AGENTRT_BENCH_VERBOSE"))
              std::fprintf(stderr, "%s:%d %s: %s | %s\n", r.file.c_str(), line_no,
                           call.name.c_str(), tools::describe(errors).c_str(),
                           call.arguments_json.c_str());
          }
        } catch (const std::exception& e) {
          all_valid = false;
          if (std::getenv("AGENTRT_BENCH_VERBOSE"))
            std::fprintf(stderr, "%s:%d %s: %s | %s\n", r.file.c_str(), line_no, call.name.c_str(),
                         e.what(), call.arguments_json.c_str());
        }
      }
      r.valid += all_valid;
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (on_file) on_file(r);
    results.push_back(r);
  }
  return results;
}

}  // namespace agentrt
