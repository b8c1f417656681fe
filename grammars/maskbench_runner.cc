#include "grammars/maskbench_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <stdexcept>

#include "grammars/compiled_grammar.h"
#include "grammars/matcher.h"
#include "grammars/python_json.h"

namespace agentrt::grammars {
namespace {

using Clock = std::chrono::steady_clock;

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(std::ceil(p / 100.0 * v.size())) - (p > 0 ? 1 : 0);
  return v[std::min(idx, v.size() - 1)];
}

}  // namespace

std::vector<int32_t> longest_match_tokenize(const TokenizerIndex& tokenizer,
                                            std::string_view text) {
  const auto& nodes = tokenizer.trie().nodes();
  const auto& values = tokenizer.trie().values();
  std::vector<int32_t> out;
  size_t pos = 0;
  while (pos < text.size()) {
    // Walk down the preorder trie: a node's children start at node+1, siblings follow `end`.
    uint32_t node = 0;
    int32_t best = -1;
    size_t best_len = 0;
    for (size_t d = 0; pos + d < text.size(); ++d) {
      auto b = static_cast<uint8_t>(text[pos + d]);
      uint32_t child = node + 1;
      uint32_t found = 0;
      while (child < nodes[node].end) {
        if (nodes[child].byte == b) {
          found = child;
          break;
        }
        child = nodes[child].end;
      }
      if (!found) break;
      node = found;
      if (nodes[node].values_end > nodes[node].values_begin) {
        best = values[nodes[node].values_begin];
        best_len = d + 1;
      }
    }
    if (best < 0) {
      throw std::runtime_error("longest_match_tokenize: no token for byte " + std::to_string(pos));
    }
    out.push_back(best);
    pos += best_len;
  }
  return out;
}

void MaskBenchReport::add(SchemaOutcome o) {
  ++schemas;
  switch (o.status) {
    case SchemaOutcome::Status::kPassed:
      ++passed;
      break;
    case SchemaOutcome::Status::kCompileError:
      ++compile_errors;
      break;
    case SchemaOutcome::Status::kTimeout:
      ++timeouts;
      break;
    case SchemaOutcome::Status::kCrash:
      ++crashes;
      break;
    default:
      break;
  }
  if (o.valid_rejected) ++validation_errors;
  if (o.invalid_accepted) ++invalidation_errors;
  valid_tests += o.valid_tests;
  invalid_tests += o.invalid_tests;
  tokens += o.tbm_us.size();
  if (o.status != SchemaOutcome::Status::kCompileError) ttfm_us.push_back(o.ttfm_us);
  tbm_us.insert(tbm_us.end(), o.tbm_us.begin(), o.tbm_us.end());
  if (o.status != SchemaOutcome::Status::kPassed) {
    o.tbm_us.clear();
    failures.push_back(std::move(o));
  }
}

std::string MaskBenchReport::table() const {
  char buf[256];
  std::string out;
  auto row = [&](const char* name, double value) {
    std::snprintf(buf, sizeof buf, "| %-28s | %12.0f |\n", name, value);
    out += buf;
  };
  out += "| metric                       |      agentrt |\n";
  out += "|------------------------------|-------------:|\n";
  row("TBM p50 (us)", percentile(tbm_us, 50));
  row("TBM p99 (us)", percentile(tbm_us, 99));
  row("TBM p99.9 (us)", percentile(tbm_us, 99.9));
  row("TTFM p50 (us)", percentile(ttfm_us, 50));
  row("TTFM p99 (us)", percentile(ttfm_us, 99));
  std::snprintf(buf, sizeof buf, "| schemas passing (of %-6zu)  | %12zu |\n", schemas, passed);
  out += buf;
  row("compile errors", static_cast<double>(compile_errors));
  row("validation errors", static_cast<double>(validation_errors));
  row("invalidation errors", static_cast<double>(invalidation_errors));
  row("timeouts", static_cast<double>(timeouts));
  row("crashes", static_cast<double>(crashes));
  std::snprintf(buf, sizeof buf, "\n%zu valid + %zu invalid instances, %zu tokens\n\n", valid_tests,
                invalid_tests, tokens);
  out += buf;
  out += "| percentile (us) |         TTFM |          TBM |\n";
  out += "|-----------------|-------------:|-------------:|\n";
  for (double p : {25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0}) {
    std::snprintf(
        buf, sizeof buf, "| %-15s | %12.0f | %12.0f |\n",
        p == 100.0
            ? "max"
            : ("p" + std::string(p == 99.9 ? "99.9" : std::to_string(static_cast<int>(p)))).c_str(),
        percentile(ttfm_us, p), percentile(tbm_us, p));
    out += buf;
  }
  return out;
}

std::vector<std::string> list_maskbench_files(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) throw std::runtime_error("MaskBench folder " + dir + " not found");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

SchemaOutcome run_maskbench_schema(const nlohmann::ordered_json& doc, const std::string& name,
                                   const std::shared_ptr<const TokenizerIndex>& tokenizer,
                                   const TokenizeFn& tokenize, const MaskBenchOptions& options) {
  SchemaOutcome out;
  out.file = name;
  Clock::time_point start = Clock::now();
  std::vector<uint32_t> mask(tokenizer->mask_words());
  std::shared_ptr<const CompiledGrammar> compiled;
  try {
    Grammar g = grammar_from_json_schema(doc.at("schema"), options.schema_options);
    compiled = compile(g, tokenizer);
    GrammarMatcher first(compiled);
    first.fill_next_token_bitmask(mask.data());
  } catch (const std::exception& e) {
    out.status = SchemaOutcome::Status::kCompileError;
    out.detail = e.what();
    return out;
  }
  out.ttfm_us = us_since(start);
  const nlohmann::ordered_json& tests =
      doc.contains("tests") ? doc["tests"] : nlohmann::ordered_json::array();
  try {
    for (size_t i = 0; i < tests.size(); ++i) {
      const nlohmann::ordered_json& test = tests[i];
      bool valid = test.at("valid").get<bool>();
      std::vector<int32_t> tokens = tokenize(python_json_dumps(test.at("data")));
      GrammarMatcher m(compiled);
      bool accepted = true;
      size_t rejected_at = 0;
      for (size_t t = 0; t < tokens.size(); ++t) {
        Clock::time_point t0 = Clock::now();
        m.fill_next_token_bitmask(mask.data());
        int32_t id = tokens[t];
        bool allowed = (mask[id >> 5] >> (id & 31)) & 1u;
        bool ok = m.accept_token(id);
        out.tbm_us.push_back(us_since(t0));
        if (allowed != ok) {
          out.status = SchemaOutcome::Status::kCrash;
          out.detail = "test #" + std::to_string(i) + ": mask says " + (allowed ? "" : "not ") +
                       "allowed for token " + std::to_string(t) + " but accept_token disagrees";
          return out;
        }
        if (!ok) {
          accepted = false;
          rejected_at = t;
          break;
        }
        if (us_since(start) > options.timeout_ms * 1000) {
          out.status = SchemaOutcome::Status::kTimeout;
          return out;
        }
      }
      if (accepted && !m.can_end()) {
        accepted = false;
        rejected_at = tokens.size();
      }
      if (valid && !accepted) {
        out.valid_rejected = true;
        if (out.detail.empty()) {
          out.detail = "test #" + std::to_string(i) + ": valid instance rejected at token " +
                       std::to_string(rejected_at);
        }
      } else if (!valid && accepted) {
        out.invalid_accepted = true;
        if (out.detail.empty()) {
          out.detail = "test #" + std::to_string(i) + ": invalid instance accepted";
        }
      } else if (valid) {
        ++out.valid_tests;
      } else {
        ++out.invalid_tests;
      }
    }
  } catch (const std::exception& e) {
    out.status = SchemaOutcome::Status::kCrash;
    out.detail = e.what();
    return out;
  }
  if (out.valid_rejected) {
    out.status = SchemaOutcome::Status::kValidationError;
  } else if (out.invalid_accepted) {
    out.status = SchemaOutcome::Status::kInvalidationError;
  }
  return out;
}

MaskBenchReport run_maskbench(const std::vector<std::string>& files,
                              const std::shared_ptr<const TokenizerIndex>& tokenizer,
                              const TokenizeFn& tokenize, const MaskBenchOptions& options) {
  MaskBenchReport report;
  size_t step = std::max<size_t>(options.every, 1);
  size_t taken = 0;
  for (size_t i = 0; i < files.size(); i += step) {
    if (options.limit && taken++ >= options.limit) break;
    std::string name = std::filesystem::path(files[i]).filename().string();
    SchemaOutcome outcome;
    try {
      std::ifstream in(files[i]);
      if (!in) throw std::runtime_error("cannot open " + files[i]);
      nlohmann::ordered_json doc = nlohmann::ordered_json::parse(in);
      outcome = run_maskbench_schema(doc, name, tokenizer, tokenize, options);
    } catch (const std::exception& e) {
      outcome.file = name;
      outcome.status = SchemaOutcome::Status::kCrash;
      outcome.detail = e.what();
    }
    static const char* kNames[] = {
        "passed", "compile error", "validation error", "invalidation error", "timeout", "crash"};
    if (options.per_schema) {
      double max_tbm = 0, total_tbm = 0;
      for (double t : outcome.tbm_us) {
        max_tbm = std::max(max_tbm, t);
        total_tbm += t;
      }
      *options.per_schema << name << '\t' << kNames[static_cast<int>(outcome.status)] << '\t'
                          << outcome.ttfm_us << '\t' << outcome.tbm_us.size() << '\t' << max_tbm
                          << '\t' << total_tbm << '\n';
    }
    if (options.log && outcome.status != SchemaOutcome::Status::kPassed) {
      *options.log << name << ": " << kNames[static_cast<int>(outcome.status)] << ": "
                   << outcome.detail.substr(0, 300) << "\n";
    }
    report.add(std::move(outcome));
  }
  return report;
}

}  // namespace agentrt::grammars
