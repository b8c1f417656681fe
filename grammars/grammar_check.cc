#include "grammars/grammar_check.h"

#include <cstdio>

#include "grammars/compiled_grammar.h"
#include "grammars/matcher.h"

namespace agentrt::grammars {

CheckResult check_text(const Grammar& grammar, std::string_view text) {
  // A vocabulary of the 256 single bytes is enough to drive the matcher.
  Vocabulary bytes;
  for (int b = 0; b < 256; ++b) bytes.token_bytes.push_back(std::string(1, static_cast<char>(b)));
  GrammarMatcher m(compile(grammar, TokenizerIndex::build(std::move(bytes))));
  CheckResult r;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!m.accept_bytes(text.substr(i, 1))) {
      r.byte = i;
      auto c = static_cast<unsigned char>(text[i]);
      char buf[64];
      if (c >= 0x20 && c < 0x7F) {
        std::snprintf(buf, sizeof buf, "unexpected '%c'", c);
      } else {
        std::snprintf(buf, sizeof buf, "unexpected byte 0x%02X", c);
      }
      r.reason = buf;
      if (m.can_end()) r.reason += " after a complete document";
      std::string expected = m.find_jump_forward_bytes();
      if (!expected.empty()) r.reason += " (expected \"" + expected.substr(0, 40) + "\")";
      return r;
    }
  }
  r.byte = text.size();
  if (!m.can_end()) {
    r.reason = "unexpected end of input";
    std::string expected = m.find_jump_forward_bytes();
    if (!expected.empty()) r.reason += " (expected \"" + expected.substr(0, 40) + "\")";
    return r;
  }
  r.accepted = true;
  return r;
}

}  // namespace agentrt::grammars
