#include "grammars/compiled_grammar.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "grammars/past_return_tokens.h"
#include "grammars/position_masks.h"

namespace agentrt::grammars {

// Lazily filled, per-state slots: readers take an acquire load; builders work outside the lock
// and publish under it. The slots come in blocks allocated on first use: the first masks of a
// grammar of 170K states (a long counted string) touch a few dozen of them, and zeroing a
// table for every state at compile time was a megabyte of fresh pages per table.
class MaskSlots {
 public:
  explicit MaskSlots(size_t n) : num_blocks_((n + kBlock - 1) / kBlock) {
    blocks_ = std::make_unique<std::atomic<Block*>[]>(num_blocks_);
    for (size_t b = 0; b < num_blocks_; ++b) blocks_[b].store(nullptr, std::memory_order_relaxed);
  }
  // `resolve` returns a pointer that stays valid for the grammar's lifetime; if two threads
  // race, both results are valid and the slot keeps one.
  template <typename Resolve>
  const PositionMasks& get(size_t i, Resolve resolve) {
    std::atomic<const PositionMasks*>& slot = block(i / kBlock).slots[i % kBlock];
    if (const PositionMasks* p = slot.load(std::memory_order_acquire)) return *p;
    const PositionMasks* p = resolve();
    slot.store(p, std::memory_order_release);
    return *p;
  }

 private:
  static constexpr size_t kBlock = 1024;
  struct Block {
    Block() {
      for (auto& s : slots) s.store(nullptr, std::memory_order_relaxed);
    }
    std::atomic<const PositionMasks*> slots[kBlock];
  };
  Block& block(size_t b) {
    if (Block* p = blocks_[b].load(std::memory_order_acquire)) return *p;
    std::lock_guard<std::mutex> lock(mu_);
    if (Block* p = blocks_[b].load(std::memory_order_relaxed)) return *p;
    owned_.push_back(std::make_unique<Block>());
    blocks_[b].store(owned_.back().get(), std::memory_order_release);
    return *owned_.back();
  }

  size_t num_blocks_;
  std::unique_ptr<std::atomic<Block*>[]> blocks_;
  std::mutex mu_;  // guards owned_
  std::vector<std::unique_ptr<Block>> owned_;
};

// Entries are mostly short id lists (the tokens that fit after a return are few): a bound
// against pathological grammars.
constexpr size_t kMaxPastReturnBytes = size_t{64} << 20;

struct CompiledGrammar::Cache {
  Cache(const PushdownAutomaton& pda, const TokenizerIndex& tokenizer)
      : short_masks(pda.states.size()),
        long_masks(pda.states.size()),
        short_subtrees(&tokenizer.shared_subtrees(),
                       [this](int32_t state) {
                         std::lock_guard<std::mutex> lock(mu);
                         return signatures.of(state);
                       }),
        signatures(pda, static_cast<int>(TokenizerIndex::kShortTokenBytes)) {}
  MaskSlots short_masks;             // per state, pointing into by_signature's entries
  MaskSlots long_masks;              // per state
  SubtreeMasksCache short_subtrees;  // walks below trie nodes (some shared with other grammars)
  PastReturnTokens past_returns{kMaxPastReturnBytes};
  std::mutex mu;
  std::vector<std::shared_ptr<const PositionMasks>> owned;
  // Guarded by mu.
  PositionSignatures signatures;
  std::unordered_map<PositionSignature, const PositionMasks*, PositionSignatureHash> by_signature;
};

CompiledGrammar::CompiledGrammar(PushdownAutomaton pda,
                                 std::shared_ptr<const TokenizerIndex> tokenizer)
    : pda_(std::move(pda)),
      tokenizer_(std::move(tokenizer)),
      cache_(std::make_unique<Cache>(pda_, *tokenizer_)) {}

CompiledGrammar::~CompiledGrammar() = default;

const PositionMasks& CompiledGrammar::short_token_masks(int32_t state) const {
  return cache_->short_masks.get(state, [&]() -> const PositionMasks* {
    Cache& c = *cache_;
    PositionSignature sig;
    {
      std::lock_guard<std::mutex> lock(c.mu);
      sig = c.signatures.of(state);
      if (auto it = c.by_signature.find(sig); it != c.by_signature.end()) return it->second;
    }
    // Grammar-independent positions may have been classified by an earlier grammar.
    std::shared_ptr<const PositionMasks> masks;
    if (sig.pure) masks = tokenizer_->shared_masks().find(sig);
    if (!masks) {
      masks = std::make_shared<const PositionMasks>(
          build_position_masks(pda_, *tokenizer_, tokenizer_->short_trie(), state,
                               sig.pure ? nullptr : &c.short_subtrees));
      if (sig.pure) masks = tokenizer_->shared_masks().insert(sig, masks);
    }
    std::lock_guard<std::mutex> lock(c.mu);
    auto [it, inserted] = c.by_signature.emplace(sig, masks.get());
    if (inserted) c.owned.push_back(std::move(masks));
    return it->second;
  });
}

const PositionMasks& CompiledGrammar::long_token_masks(int32_t state) const {
  return cache_->long_masks.get(state, [&]() -> const PositionMasks* {
    auto built = std::make_shared<const PositionMasks>(
        build_position_masks(pda_, *tokenizer_, tokenizer_->long_trie(), state));
    std::lock_guard<std::mutex> lock(cache_->mu);
    cache_->owned.push_back(std::move(built));
    return cache_->owned.back().get();
  });
}

PositionSignature CompiledGrammar::short_signature(int32_t state) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  return cache_->signatures.of(state);
}

PastReturnTokens& CompiledGrammar::past_return_tokens() const { return cache_->past_returns; }

size_t CompiledGrammar::num_short_token_masks() const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  return cache_->by_signature.size();
}

void CompiledGrammar::precompute_all() const {
  for (size_t s = 0; s < pda_.states.size(); ++s) {
    if (pda_.states[s].bytes.empty()) continue;
    short_token_masks(static_cast<int32_t>(s));
    long_token_masks(static_cast<int32_t>(s));
  }
}

std::shared_ptr<const CompiledGrammar> compile(const Grammar& grammar,
                                               std::shared_ptr<const TokenizerIndex> tokenizer) {
  if (!tokenizer) throw std::invalid_argument("compile: no tokenizer index");
  return std::make_shared<const CompiledGrammar>(PushdownAutomaton::build(grammar),
                                                 std::move(tokenizer));
}

}  // namespace agentrt::grammars
