// bench_maskbench: the MaskBench benchmark (see grammars/maskbench_runner.h) over
// ../shared/data/maskbench or a folder given on the command line; same options as
// `agentrt grammar bench`.
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "grammars/maskbench_command.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0].starts_with("-")) {
    args.insert(args.begin(), std::string(AGENTRT_SHARED_DATA) + "/maskbench");
  }
  const char* home = std::getenv("AGENTRT_HOME");
  std::string tokenizer = std::string(home && *home ? home : AGENTRT_HOME) +
                          "/models/deepseek-v3-tokenizer/tokenizer.json";
  try {
    // Instances are tokenized with the real BPE tokenizer, as MaskBench does.
    auto bpe = [](const std::string& tokenizer_json) -> agentrt::grammars::TokenizeFn {
      std::shared_ptr<const agentrt::engine::Tokenizer> t =
          agentrt::engine::Tokenizer::load(tokenizer_json);
      return [t](std::string_view text) { return t->encode(text); };
    };
    return agentrt::grammars::run_maskbench_command(args, tokenizer, bpe, std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "bench_maskbench: error: " << e.what() << "\n";
    return 2;
  }
}
