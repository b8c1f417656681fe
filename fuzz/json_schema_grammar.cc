// libFuzzer target: JSON Schema text -> grammar -> pushdown automaton, and a few bytes through a
// matcher. Schemas the compiler does not support are GrammarErrors; any other exception (or a
// crash / sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/grammar_harness.h"
#include "grammars/json_schema.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto index = agentrt::fuzz::byte_index({"{\"", "\": "});
  // The text after "\n---\n" (if any) is fed to the matcher.
  const auto [text, input] =
      agentrt::fuzz::split_input(std::string_view(reinterpret_cast<const char*>(data), size));
  auto schema = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) return 0;
  agentrt::grammars::JsonSchemaOptions options;
  options.whitespace = (size & 1) ? agentrt::grammars::JsonSchemaOptions::Whitespace::flexible
                                  : agentrt::grammars::JsonSchemaOptions::Whitespace::compact;
  options.approximate = (size & 2) != 0;
  try {
    agentrt::fuzz::run_matcher(agentrt::grammars::grammar_from_json_schema(schema, options), index,
                               input);
  } catch (const agentrt::grammars::GrammarError&) {
  }
  return 0;
}
