// `agentrt tokenize [--tokenizer DIR] [--special]`: UTF-8 text on stdin -> JSON array of ids.
// `agentrt detokenize [--tokenizer DIR]`: JSON array of ids on stdin -> text.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "cli/commands.h"
#include "cli/tokenizer_path.h"
#include "engine/tokenizer.h"

namespace agentrt::cli {

namespace {

struct TokenizeFlags {
  std::filesystem::path tokenizer = default_tokenizer_dir();
  bool special = false;
};

TokenizeFlags parse_flags(const Args& args, bool allow_special, const char* command) {
  TokenizeFlags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--tokenizer" && i + 1 < args.size()) {
      flags.tokenizer = args[++i];
    } else if (allow_special && args[i] == "--special") {
      flags.special = true;
    } else {
      throw std::invalid_argument(std::string("unknown argument '") + args[i] +
                                  "' (usage: agentrt " + command + " [--tokenizer DIR]" +
                                  (allow_special ? " [--special]" : "") + ")");
    }
  }
  return flags;
}

std::string read_stdin() {
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

}  // namespace

int cmd_tokenize(const Args& args) {
  const TokenizeFlags flags = parse_flags(args, true, "tokenize");
  const auto tokenizer = engine::Tokenizer::load(flags.tokenizer);
  const std::vector<int32_t> ids = tokenizer->encode(read_stdin(), flags.special);
  std::cout << nlohmann::json(ids).dump() << "\n";
  return 0;
}

int cmd_detokenize(const Args& args) {
  const TokenizeFlags flags = parse_flags(args, false, "detokenize");
  const auto tokenizer = engine::Tokenizer::load(flags.tokenizer);
  nlohmann::json ids;
  try {
    ids = nlohmann::json::parse(read_stdin());
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("stdin is not JSON: ") + e.what());
  }
  if (!ids.is_array()) throw std::invalid_argument("stdin must hold a JSON array of token ids");
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ids[i].is_number_integer()) {
      throw std::invalid_argument("element " + std::to_string(i) + " is not an integer token id");
    }
    tokens.push_back(ids[i].get<int32_t>());
  }
  std::cout << tokenizer->decode(tokens);
  return 0;
}

}  // namespace agentrt::cli
