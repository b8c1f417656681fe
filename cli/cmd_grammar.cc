// `agentrt grammar check|bench`: a thin layer over grammars/ (grammar_check.h,
// maskbench_command.h).
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>

#include "cli/commands.h"
#include "cli/tokenizer_path.h"
#include "engine/tokenizer.h"
#include "grammars/grammar_check.h"
#include "grammars/json_schema.h"
#include "grammars/maskbench_command.h"

namespace agentrt::cli {
namespace {

constexpr const char* kUsage =
    "usage: agentrt grammar check (--schema FILE | --ebnf FILE | --regex PATTERN) --instance FILE\n"
    "                             [--root RULE] [--compact]\n"
    "       agentrt grammar bench DIR [--limit N] [--every K] [--timeout-ms MS]\n"
    "                             [--tokenizer tokenizer.json] [--longest-match]\n"
    "                             [--per-schema FILE.tsv] [--verbose]";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// MaskBench tokenizes instances with the model's own BPE tokenizer; grammars/ cannot reach the
// engine, so the CLI plugs it in.
grammars::TokenizeFn bpe_tokenizer(const std::string& tokenizer_json) {
  std::shared_ptr<const engine::Tokenizer> tokenizer = engine::Tokenizer::load(tokenizer_json);
  return [tokenizer](std::string_view text) { return tokenizer->encode(text); };
}

int grammar_check(const Args& args) {
  std::string schema, ebnf, regex, instance, root = "root";
  bool compact = false;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--schema") {
      schema = value();
    } else if (a == "--ebnf") {
      ebnf = value();
    } else if (a == "--regex") {
      regex = value();
    } else if (a == "--instance") {
      instance = value();
    } else if (a == "--root") {
      root = value();
    } else if (a == "--compact") {
      compact = true;
    } else {
      throw std::invalid_argument("unknown argument " + a + "\n" + kUsage);
    }
  }
  if (instance.empty() || (schema.empty() + ebnf.empty() + regex.empty()) != 2) {
    throw std::invalid_argument(std::string("check needs one grammar and --instance\n") + kUsage);
  }
  grammars::Grammar grammar = [&] {
    if (!ebnf.empty()) return grammars::Grammar::from_ebnf(read_file(ebnf), root);
    if (!regex.empty()) return grammars::Grammar::from_regex(regex);
    nlohmann::ordered_json doc;
    try {
      doc = nlohmann::ordered_json::parse(read_file(schema));
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(schema + ": " + e.what());
    }
    grammars::JsonSchemaOptions options;
    if (!compact) options.whitespace = grammars::JsonSchemaOptions::Whitespace::flexible;
    return grammars::grammar_from_json_schema(doc, options);
  }();
  grammars::CheckResult r = grammars::check_text(grammar, read_file(instance));
  if (r.accepted) {
    std::cout << "accept\n";
    return 0;
  }
  std::cout << "reject at byte " << r.byte << ": " << r.reason << "\n";
  return 1;
}

}  // namespace

int cmd_grammar(const Args& args) {
  if (args.empty()) throw std::invalid_argument(kUsage);
  if (args[0] == "check") return grammar_check(args);
  if (args[0] == "bench") {
    Args rest(args.begin() + 1, args.end());
    return grammars::run_maskbench_command(rest,
                                           (default_tokenizer_dir() / "tokenizer.json").string(),
                                           bpe_tokenizer, std::cout, std::cerr);
  }
  throw std::invalid_argument("unknown grammar subcommand '" + args[0] + "'\n" + kUsage);
}

}  // namespace agentrt::cli
