// libFuzzer target: regex pattern -> Grammar -> automaton -> EBNF and back. Any exception other
// than GrammarError (or a crash / sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "grammars/grammar.h"
#include "grammars/pushdown_automaton.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view pattern(reinterpret_cast<const char*>(data), size);
  try {
    auto g = agentrt::grammars::Grammar::from_regex(pattern);
    (void)agentrt::grammars::PushdownAutomaton::build(g);
    (void)agentrt::grammars::Grammar::from_ebnf(g.to_ebnf());
  } catch (const agentrt::grammars::GrammarError&) {
  }
  return 0;
}
