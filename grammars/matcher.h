// Per-sequence grammar matcher: the allowed-token bitmask for the current state, token
// acceptance, rollback, completion, jump-forward and lazy (triggered) mode. Cheap to create;
// not thread-safe itself, but any number of matchers may share one CompiledGrammar.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "grammars/compiled_grammar.h"

namespace agentrt::grammars {

struct TriggerOptions {
  // Free text until one of these appears in the output; the trigger's bytes are then the start
  // of the constrained text.
  std::vector<std::string> trigger_strings;
  // Token ids that trigger the constraint; the constrained text starts after the token.
  std::vector<int32_t> trigger_tokens;
};

class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const CompiledGrammar> grammar,
                          std::optional<TriggerOptions> lazy = std::nullopt);
  ~GrammarMatcher();
  GrammarMatcher(GrammarMatcher&&) noexcept;
  GrammarMatcher& operator=(GrammarMatcher&&) noexcept;

  size_t mask_words() const;  // ceil(vocab / 32)
  // Bit i of word i/32 (LSB first) = token i allowed. Writes all mask_words() words.
  void fill_next_token_bitmask(uint32_t* mask) const;
  bool is_token_allowed(int32_t id) const;
  bool accept_token(int32_t id);                // false (state unchanged) if not allowed
  bool accept_bytes(std::string_view bytes);    // false (state unchanged) if not a valid prefix
  void rollback(int num_tokens);                // undoes accept_token / accept_bytes calls
  int num_accepted() const;                     // calls that rollback can undo
  bool is_terminated() const;                   // a stop token was accepted
  bool can_end() const;                         // the grammar is complete here
  std::string find_jump_forward_bytes() const;  // forced continuation ("" if none)
  bool triggered() const;                       // lazy mode: constraint active
  void reset();

  const CompiledGrammar& grammar() const;
  // Parse stacks alive now (a measure of the grammar's ambiguity at this point).
  size_t num_stacks() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Fills masks (n × mask_words words, row i for matchers[i]) using up to `threads` threads.
void fill_next_token_bitmask_batch(std::span<GrammarMatcher* const> matchers, uint32_t* masks,
                                   int threads = 1);

}  // namespace agentrt::grammars
