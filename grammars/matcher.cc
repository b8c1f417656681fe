#include "grammars/matcher.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <unordered_set>

#include "grammars/parse_stacks.h"
#include "grammars/past_return_tokens.h"
#include "grammars/position_masks.h"

namespace agentrt::grammars {
namespace {

void set_bit(uint32_t* mask, int32_t id) { mask[id >> 5] |= 1u << (id & 31); }

// One entry per accepted token (or byte string); rollback pops them.
struct Snapshot {
  StackSet stacks;
  bool terminated = false;
  bool triggered = false;
  size_t free_text_len = 0;  // lazy mode: bytes of free text so far
};

}  // namespace

struct GrammarMatcher::State {
  State(std::shared_ptr<const CompiledGrammar> g, std::optional<TriggerOptions> l)
      : grammar(std::move(g)), lazy(std::move(l)), stepper(grammar->automaton(), arena) {}

  std::shared_ptr<const CompiledGrammar> grammar;
  std::optional<TriggerOptions> lazy;
  StackArena arena;
  StackStepper stepper;
  std::vector<Snapshot> history;  // front: the start; back: now
  std::string free_text;
  std::vector<uint32_t> free_text_mask;  // lazy mode before the trigger, built on first use
  // Scratch.
  StackSet a, b;
  std::vector<StackSet> levels;
  std::vector<int32_t> one;
  std::unordered_set<const PositionMasks*> seen_masks;
  struct PastReturns {
    const PositionMasks* masks = nullptr;
    int32_t below = -1;            // long tokens: the stack; short: the stack below its top
    PositionSignature signature;   // short tokens: of the stack's top
    std::vector<uint32_t> tokens;  // bitmask
  };
  static constexpr size_t kPastReturnsKept = 8;
  PastReturnStack key;             // scratch
  std::vector<int32_t> found_ids;  // scratch
  std::vector<PastReturns> past_returns;
  size_t past_returns_victim = 0;

  const TokenizerIndex& tokenizer() const { return grammar->tokenizer(); }
  const Snapshot& now() const { return history.back(); }

  void start() {
    history.clear();
    free_text.clear();
    Snapshot s;
    s.triggered = !lazy.has_value();
    if (s.triggered) stepper.initial(s.stacks);
    history.push_back(std::move(s));
  }

  // Runs bytes from `from`; on success `out` holds the result.
  bool run(const StackSet& from, std::string_view bytes, StackSet& out) {
    if (bytes.empty()) {
      out = from;
      return true;
    }
    const StackSet* cur = &from;
    for (size_t i = 0; i < bytes.size(); ++i) {
      StackSet& next = (i % 2 == 0) ? a : b;
      stepper.advance(*cur, static_cast<uint8_t>(bytes[i]), next);
      if (next.dead() && !(i + 1 == bytes.size() && next.can_end)) return false;
      cur = &next;
    }
    out = *cur;
    return true;
  }

  bool is_trigger_token(int32_t id) const {
    const auto& t = lazy->trigger_tokens;
    return std::find(t.begin(), t.end(), id) != t.end();
  }

  // Lazy mode, before the trigger: appends free text, switching to the grammar at a trigger.
  bool accept_free_text(std::string_view bytes) {
    std::string text = free_text;
    size_t old_len = text.size();
    text.append(bytes);
    size_t best = std::string::npos;
    for (const std::string& trig : lazy->trigger_strings) {
      if (trig.empty()) continue;
      size_t from = old_len >= trig.size() ? old_len - trig.size() + 1 : 0;
      size_t p = text.find(trig, from);
      if (p != std::string::npos && p < best) best = p;
    }
    Snapshot s;
    s.free_text_len = text.size();
    if (best != std::string::npos) {
      StackSet init;
      stepper.initial(init);
      if (!run(init, std::string_view(text).substr(best), s.stacks)) return false;
      s.triggered = true;
    }
    free_text = std::move(text);
    history.push_back(std::move(s));
    return true;
  }

  bool accept(int32_t id, bool commit) {
    const TokenizerIndex& tok = tokenizer();
    if (id < 0 || static_cast<size_t>(id) >= tok.vocab_size()) return false;
    const Snapshot& cur = now();
    if (cur.terminated) return false;
    Snapshot s;
    s.free_text_len = cur.free_text_len;
    if (!cur.triggered) {
      if (tok.is_stop(id)) {
        s.terminated = true;
      } else if (is_trigger_token(id)) {
        s.triggered = true;
        stepper.initial(s.stacks);
      } else if (tok.is_special(id)) {
        return false;
      } else {
        if (!commit) return true;
        return accept_free_text(tok.vocabulary().token_bytes[id]);
      }
      if (commit) history.push_back(std::move(s));
      return true;
    }
    s.triggered = true;
    if (tok.is_stop(id)) {
      if (!cur.stacks.can_end) return false;
      s.terminated = true;
      s.stacks = cur.stacks;
    } else if (tok.is_special(id)) {
      return false;
    } else if (!run(cur.stacks, tok.vocabulary().token_bytes[id], s.stacks)) {
      return false;
    }
    if (commit) history.push_back(std::move(s));
    return true;
  }

  void fill_free_text_mask(uint32_t* mask) {
    if (free_text_mask.empty()) {
      const TokenizerIndex& tok = tokenizer();
      free_text_mask.assign(tok.mask_words(), 0);
      for (size_t i = 0; i < tok.vocab_size(); ++i) {
        auto id = static_cast<int32_t>(i);
        if (!tok.is_special(id) || is_trigger_token(id)) set_bit(free_text_mask.data(), id);
      }
    }
    std::memcpy(mask, free_text_mask.data(), free_text_mask.size() * sizeof(uint32_t));
  }

  // Tokens below trie node `point` whose rest (after the node) fits the stacks in levels[0]
  // (the closed stack below the top): the tokens that continue past a return from the top's rule.
  void check_return_point(const ByteTrie& trie, uint32_t point, std::vector<int32_t>& out) {
    const std::vector<ByteTrie::Node>& nodes = trie.nodes();
    const std::vector<int32_t>& values = trie.values();
    size_t base = nodes[point].depth;
    size_t i = point + 1;
    size_t end = nodes[point].end;
    while (i < end) {
      const ByteTrie::Node& node = nodes[i];
      size_t d = node.depth - base;
      if (d + 1 > levels.size()) levels.resize(d + 8);
      StackSet& cur = levels[d];
      stepper.advance(levels[d - 1], node.byte, cur);
      if (cur.dead()) {
        if (cur.can_end)
          out.insert(out.end(), values.begin() + node.values_begin,
                     values.begin() + node.values_end);
        i = node.end;
        continue;
      }
      out.insert(out.end(), values.begin() + node.values_begin, values.begin() + node.values_end);
      ++i;
    }
  }

  // The stack `node` as the shared cache knows it, top first: state ids (long tokens) or
  // signatures (short ones); the bottom marker last.
  void stack_key(int32_t node, bool short_trie, PastReturnStack& out) const {
    out.long_trie = !short_trie;
    out.states.clear();
    out.signatures.clear();
    for (; node >= 0; node = arena.parent(node)) {
      if (short_trie) {
        out.signatures.push_back(grammar->short_signature(arena.state(node)));
      } else {
        out.states.push_back(arena.state(node));
      }
    }
    out.states.push_back(node);
  }

  const std::vector<uint32_t>& tokens_past_returns(const PositionMasks& masks, bool short_trie,
                                                   int32_t parent) {
    PositionSignature sig;
    int32_t below = parent;
    if (short_trie) {
      sig = grammar->short_signature(arena.state(parent));
      below = arena.parent(parent);
    }
    for (const PastReturns& e : past_returns) {
      if (e.masks == &masks && e.below == below &&
          (short_trie ? e.signature == sig : e.below == parent)) {
        return e.tokens;
      }
    }
    if (past_returns.size() < kPastReturnsKept) past_returns.emplace_back();
    PastReturns& e = past_returns[past_returns_victim++ % past_returns.size()];
    e.masks = &masks;
    e.below = below;
    e.signature = sig;
    e.tokens.assign(tokenizer().mask_words(), 0);
    const TokenizerIndex& index = grammar->tokenizer();
    const ByteTrie& trie = short_trie ? index.short_trie() : index.long_trie();
    PastReturnTokens& shared = grammar->past_return_tokens();
    stack_key(parent, short_trie, key);
    const int64_t stack = shared.stack_id(key);
    bool closed = false;
    for (uint32_t p : masks.return_points) {
      std::shared_ptr<const TokenSet> tokens = stack >= 0 ? shared.find(stack, p) : nullptr;
      if (!tokens) {
        if (!closed) {
          if (levels.size() < 8) levels.resize(8);
          one.assign(1, parent);
          stepper.close(one, levels[0]);
          closed = true;
        }
        found_ids.clear();
        check_return_point(trie, p, found_ids);
        auto found = std::make_shared<TokenSet>();
        if (found_ids.size() > e.tokens.size()) {
          found->bits.assign(e.tokens.size(), 0);
          for (int32_t id : found_ids) set_bit(found->bits.data(), id);
        } else {
          found->ids = found_ids;
        }
        tokens = found;
        if (stack >= 0) shared.insert(stack, p, tokens);
      }
      tokens->add_to(e.tokens.data());
    }
    return e.tokens;
  }

  void fill(uint32_t* mask) {
    const TokenizerIndex& tok = tokenizer();
    const Snapshot& cur = now();
    if (cur.terminated) {
      std::memset(mask, 0, tok.mask_words() * sizeof(uint32_t));
      return;
    }
    if (!cur.triggered) {
      fill_free_text_mask(mask);
      return;
    }
    std::memset(mask, 0, tok.mask_words() * sizeof(uint32_t));
    // Copied: closing stacks below may grow the history's neighbours' buffers.
    // Tokens accepted whatever lies below a top depend only on its state (its class for short
    // tokens): add each once. Return suffixes depend on the real stack: check each top.
    std::vector<int32_t> tops = cur.stacks.tops;
    seen_masks.clear();
    for (int32_t top : tops) {
      int32_t state = arena.state(top);
      int32_t parent = arena.parent(top);
      const PositionMasks& short_masks = grammar->short_token_masks(state);
      const PositionMasks& long_masks = grammar->long_token_masks(state);
      if (seen_masks.insert(&short_masks).second) short_masks.add_accepted_to(mask);
      if (seen_masks.insert(&long_masks).second) long_masks.add_accepted_to(mask);
      if (parent < 0) continue;  // returning from the root ends the document: nothing may follow
      if (short_masks.return_points.empty() && long_masks.return_points.empty()) continue;
      if (!short_masks.return_points.empty()) {
        const std::vector<uint32_t>& past = tokens_past_returns(short_masks, true, parent);
        for (size_t w = 0; w < past.size(); ++w) mask[w] |= past[w];
      }
      if (!long_masks.return_points.empty()) {
        const std::vector<uint32_t>& past = tokens_past_returns(long_masks, false, parent);
        for (size_t w = 0; w < past.size(); ++w) mask[w] |= past[w];
      }
    }
    if (cur.stacks.can_end) {
      for (int32_t id : tok.vocabulary().stop_tokens) set_bit(mask, id);
    }
  }

  std::string jump_forward() {
    const Snapshot& cur = now();
    std::string out;
    if (cur.terminated || !cur.triggered) return out;
    StackSet set = cur.stacks;
    constexpr size_t kMaxForced = 1 << 16;
    while (!set.can_end && !set.dead() && out.size() < kMaxForced) {
      int only = -1;
      bool unique = true;
      for (int32_t top : set.tops) {
        for (const PdaByteEdge& e : grammar->automaton().states[arena.state(top)].bytes) {
          if (e.lo != e.hi || (only >= 0 && only != e.lo)) {
            unique = false;
            break;
          }
          only = e.lo;
        }
        if (!unique) break;
      }
      if (!unique || only < 0) break;
      StackSet next;
      stepper.advance(set, static_cast<uint8_t>(only), next);
      out += static_cast<char>(only);
      set = std::move(next);
    }
    return out;
  }
};

GrammarMatcher::GrammarMatcher(std::shared_ptr<const CompiledGrammar> grammar,
                               std::optional<TriggerOptions> lazy) {
  if (!grammar) throw std::invalid_argument("GrammarMatcher: no compiled grammar");
  state_ = std::make_unique<State>(std::move(grammar), std::move(lazy));
  state_->start();
}

GrammarMatcher::~GrammarMatcher() = default;
GrammarMatcher::GrammarMatcher(GrammarMatcher&&) noexcept = default;
GrammarMatcher& GrammarMatcher::operator=(GrammarMatcher&&) noexcept = default;

size_t GrammarMatcher::mask_words() const { return state_->tokenizer().mask_words(); }

void GrammarMatcher::fill_next_token_bitmask(uint32_t* mask) const { state_->fill(mask); }

bool GrammarMatcher::is_token_allowed(int32_t id) const { return state_->accept(id, false); }

bool GrammarMatcher::accept_token(int32_t id) { return state_->accept(id, true); }

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  State& s = *state_;
  const Snapshot& cur = s.now();
  if (cur.terminated) return false;
  if (!cur.triggered) return s.accept_free_text(bytes);
  Snapshot next;
  next.triggered = true;
  next.free_text_len = cur.free_text_len;
  if (!s.run(cur.stacks, bytes, next.stacks)) return false;
  s.history.push_back(std::move(next));
  return true;
}

void GrammarMatcher::rollback(int num_tokens) {
  State& s = *state_;
  if (num_tokens < 0 || static_cast<size_t>(num_tokens) >= s.history.size()) {
    throw std::out_of_range("GrammarMatcher::rollback: " + std::to_string(num_tokens) +
                            " tokens requested, " + std::to_string(s.history.size() - 1) +
                            " accepted");
  }
  s.history.resize(s.history.size() - num_tokens);
  s.free_text.resize(s.history.back().free_text_len);
}

int GrammarMatcher::num_accepted() const { return static_cast<int>(state_->history.size() - 1); }

bool GrammarMatcher::is_terminated() const { return state_->now().terminated; }

bool GrammarMatcher::can_end() const {
  const Snapshot& s = state_->now();
  return !s.triggered || s.stacks.can_end;
}

std::string GrammarMatcher::find_jump_forward_bytes() const { return state_->jump_forward(); }

bool GrammarMatcher::triggered() const { return state_->now().triggered; }

void GrammarMatcher::reset() { state_->start(); }

const CompiledGrammar& GrammarMatcher::grammar() const { return *state_->grammar; }

size_t GrammarMatcher::num_stacks() const { return state_->now().stacks.tops.size(); }

void fill_next_token_bitmask_batch(std::span<GrammarMatcher* const> matchers, uint32_t* masks,
                                   int threads) {
  if (matchers.empty()) return;
  size_t words = matchers[0]->mask_words();
  size_t n = matchers.size();
  size_t workers = std::clamp<size_t>(threads, 1, n);
  auto work = [&](size_t w) {
    for (size_t i = w; i < n; i += workers) {
      matchers[i]->fill_next_token_bitmask(masks + i * words);
    }
  };
  if (workers == 1) {
    work(0);
    return;
  }
  std::vector<std::jthread> pool;
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(work, w);
  work(0);
}

}  // namespace agentrt::grammars
