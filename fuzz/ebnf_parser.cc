// libFuzzer target: EBNF text -> Grammar -> pushdown automaton, and a few bytes through a matcher.
// Any exception other than GrammarError (or a crash / sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/grammar_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto index = agentrt::fuzz::byte_index({"ab"});
  // The text after "\n---\n" (if any) is fed to the matcher.
  const auto [text, input] =
      agentrt::fuzz::split_input(std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    auto g = agentrt::grammars::Grammar::from_ebnf(text);
    (void)agentrt::grammars::Grammar::from_ebnf(g.to_ebnf());
    agentrt::fuzz::run_matcher(g, index, input);
  } catch (const agentrt::grammars::GrammarError&) {
  }
  return 0;
}
