// `agentrt model init --preset tiny|small --vocab-from TOKENIZER_DIR --out DIR [--vocab N]
//  [--dtype bf16|f32|fp8] [--expert-dtype fp4|fp8|bf16|f32] [--seed S]`: writes a random-weight
//  DeepSeek-V4 checkpoint.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "cli/commands.h"
#include "engine/model_init.h"

namespace agentrt::cli {

int cmd_model(const Args& args) {
  if (args.empty() || args[0] != "init") {
    throw std::invalid_argument(
        "usage: agentrt model init --preset tiny|small --vocab-from TOKENIZER_DIR --out DIR "
        "[--vocab N] [--dtype bf16|f32|fp8] [--expert-dtype fp4|fp8|bf16|f32] [--seed S]");
  }
  engine::ModelInitOptions options;
  std::string out;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--preset")
      options.preset = value();
    else if (a == "--vocab-from")
      options.tokenizer_dir = value();
    else if (a == "--out")
      out = value();
    else if (a == "--vocab")
      options.vocab_size = std::stoll(value());
    else if (a == "--dtype")
      options.dtype = value();
    else if (a == "--expert-dtype")
      options.expert_dtype = value();
    else if (a == "--seed")
      options.seed = std::stoull(value());
    else
      throw std::invalid_argument("model init: unknown argument '" + a + "'");
  }
  if (out.empty()) throw std::invalid_argument("model init: --out DIR is required");
  engine::write_random_model(out, options);
  std::fprintf(stderr, "wrote %s model (%s) to %s\n", options.preset.c_str(), options.dtype.c_str(),
               out.c_str());
  return 0;
}

}  // namespace agentrt::cli
