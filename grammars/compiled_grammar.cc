#include "grammars/compiled_grammar.h"

#include <atomic>
#include <mutex>

#include "grammars/position_masks.h"

namespace agentrt::grammars {

// Lazily filled, per-state slots: readers take an acquire load; a builder publishes under the
// mutex (two threads may build the same entry; one copy is kept).
struct CompiledGrammar::Cache {
  explicit Cache(size_t n) : slots(new std::atomic<const PositionMasks*>[n]) {
    for (size_t i = 0; i < n; ++i) slots[i].store(nullptr, std::memory_order_relaxed);
  }
  std::unique_ptr<std::atomic<const PositionMasks*>[]> slots;
  std::mutex mu;
  std::vector<std::unique_ptr<PositionMasks>> owned;
};

CompiledGrammar::CompiledGrammar(PushdownAutomaton pda,
                                 std::shared_ptr<const TokenizerIndex> tokenizer)
    : pda_(std::move(pda)),
      tokenizer_(std::move(tokenizer)),
      cache_(std::make_unique<Cache>(pda_.states.size())) {}

CompiledGrammar::~CompiledGrammar() = default;

const PositionMasks& CompiledGrammar::position_masks(int32_t state) const {
  std::atomic<const PositionMasks*>& slot = cache_->slots[state];
  if (const PositionMasks* p = slot.load(std::memory_order_acquire)) return *p;
  auto built = std::make_unique<PositionMasks>(build_position_masks(pda_, *tokenizer_, state));
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (const PositionMasks* p = slot.load(std::memory_order_acquire)) return *p;
  const PositionMasks* p = built.get();
  cache_->owned.push_back(std::move(built));
  slot.store(p, std::memory_order_release);
  return *p;
}

void CompiledGrammar::precompute_all() const {
  for (size_t s = 0; s < pda_.states.size(); ++s) {
    if (!pda_.states[s].bytes.empty()) position_masks(static_cast<int32_t>(s));
  }
}

std::shared_ptr<const CompiledGrammar> compile(const Grammar& grammar,
                                               std::shared_ptr<const TokenizerIndex> tokenizer) {
  if (!tokenizer) throw std::invalid_argument("compile: no tokenizer index");
  return std::make_shared<const CompiledGrammar>(PushdownAutomaton::build(grammar),
                                                 std::move(tokenizer));
}

}  // namespace agentrt::grammars
