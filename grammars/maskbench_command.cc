#include "grammars/maskbench_command.h"

#include <chrono>
#include <fstream>
#include <ostream>
#include <stdexcept>

#include "grammars/hf_vocabulary.h"

namespace agentrt::grammars {

int run_maskbench_command(const std::vector<std::string>& args,
                          const std::string& default_tokenizer_json,
                          const TokenizerFactory& make_tokenizer, std::ostream& out,
                          std::ostream& err) {
  std::string dir, tokenizer_json = default_tokenizer_json;
  MaskBenchOptions options;
  bool verbose = false, longest_match = !make_tokenizer;
  std::string per_schema_path;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--limit") {
      options.limit = std::stoul(value());
    } else if (a == "--every") {
      options.every = std::stoul(value());
    } else if (a == "--timeout-ms") {
      options.timeout_ms = std::stod(value());
    } else if (a == "--tokenizer") {
      tokenizer_json = value();
    } else if (a == "--per-schema") {
      per_schema_path = value();
    } else if (a == "--longest-match") {
      longest_match = true;
    } else if (a == "--verbose") {
      verbose = true;
    } else if (!a.empty() && a[0] == '-') {
      throw std::invalid_argument("unknown option " + a);
    } else if (dir.empty()) {
      dir = a;
    } else {
      throw std::invalid_argument("unexpected argument " + a);
    }
  }
  if (dir.empty()) {
    throw std::invalid_argument(
        "usage: bench DIR [--limit N] [--every K] [--timeout-ms MS] [--tokenizer tokenizer.json] "
        "[--longest-match] [--per-schema FILE.tsv] [--verbose]");
  }
  if (verbose) options.log = &err;
  std::ofstream per_schema;
  if (!per_schema_path.empty()) {
    per_schema.open(per_schema_path);
    if (!per_schema) throw std::invalid_argument("cannot write " + per_schema_path);
    options.per_schema = &per_schema;
  }
  std::vector<std::string> files = list_maskbench_files(dir);
  auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<const TokenizerIndex> index =
      TokenizerIndex::build(load_hf_vocabulary(tokenizer_json));
  double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  TokenizeFn tok =
      longest_match
          ? TokenizeFn([&](std::string_view text) { return longest_match_tokenize(*index, text); })
          : make_tokenizer(tokenizer_json);
  MaskBenchReport report = run_maskbench(files, index, tok, options);
  out << "MaskBench: " << dir << " (" << report.schemas << " schemas, vocabulary "
      << index->vocab_size() << " tokens from " << tokenizer_json << ", loaded in "
      << static_cast<int>(load_ms)
      << " ms; tokenization: " << (longest_match ? "longest match" : "BPE tokenizer")
      << "; single thread)\n\n";
  out << report.table();
  return 0;
}

}  // namespace agentrt::grammars
