// libFuzzer target: JSON Schema text -> grammar -> pushdown automaton, and a few bytes through a
// matcher. Schemas the compiler does not support are GrammarErrors; any other exception (or a
// crash / sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "grammars/compiled_grammar.h"
#include "grammars/json_schema.h"
#include "grammars/matcher.h"

namespace {

std::shared_ptr<const agentrt::grammars::TokenizerIndex> byte_index() {
  agentrt::grammars::Vocabulary v;
  for (int b = 0; b < 256; ++b) v.token_bytes.push_back(std::string(1, static_cast<char>(b)));
  v.token_bytes.push_back("{\"");
  v.token_bytes.push_back("\": ");
  v.token_bytes.push_back("</s>");
  v.stop_tokens.push_back(258);
  return agentrt::grammars::TokenizerIndex::build(v);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto index = byte_index();
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // The text after "\n---\n" (if any) is fed to the matcher.
  std::string_view input;
  if (size_t cut = text.find("\n---\n"); cut != std::string_view::npos) {
    input = text.substr(cut + 5);
    text = text.substr(0, cut);
  }
  auto schema = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) return 0;
  agentrt::grammars::JsonSchemaOptions options;
  options.whitespace = (size & 1) ? agentrt::grammars::JsonSchemaOptions::Whitespace::flexible
                                  : agentrt::grammars::JsonSchemaOptions::Whitespace::compact;
  options.approximate = (size & 2) != 0;
  try {
    auto g = agentrt::grammars::grammar_from_json_schema(schema, options);
    agentrt::grammars::GrammarMatcher m(agentrt::grammars::compile(g, index));
    std::vector<uint32_t> mask(m.mask_words());
    for (char c : input.substr(0, 64)) {
      m.fill_next_token_bitmask(mask.data());
      if (!m.accept_bytes(std::string_view(&c, 1))) break;
    }
    (void)m.find_jump_forward_bytes();
  } catch (const agentrt::grammars::GrammarError&) {
  }
  return 0;
}
