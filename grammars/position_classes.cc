#include "grammars/position_classes.h"

namespace agentrt::grammars {
namespace {

struct Hasher {
  uint64_t a = 0x9E3779B97F4A7C15ull, b = 0xC2B2AE3D27D4EB4Full;
  void add(uint64_t x) {
    a = (a ^ x) * 0x100000001B3ull;
    a ^= a >> 29;
    b = (b + x) * 0xFF51AFD7ED558CCDull;
    b ^= b >> 32;
  }
  void add(const PositionSignature& s) {
    add(s.a);
    add(s.b);
    add(s.pure);
  }
};

// Past this recursion (long chains of nullable rule references) a state is identified by its
// id, which is conservative: it only prevents sharing.
constexpr int kMaxRecursion = 4000;

}  // namespace

PositionSignature PositionSignatures::compute(int32_t state, int depth, int recursion) {
  uint64_t key = static_cast<uint64_t>(state) * 64 + static_cast<uint64_t>(depth);
  // One lookup: a new entry is marked in progress until computed (references into an
  // unordered_map stay valid while it grows).
  auto [it, inserted] = memo_.try_emplace(key);
  Memo& memo = it->second;
  if (memo.done) return memo.signature;
  const PdaState& st = pda_.states[state];
  Hasher h;
  bool pure = true;
  h.add(st.final);
  if (depth > 0) {
    // On a cycle of nullable references, or too deep: the state's identity stands in (sound:
    // equal signatures still imply equal behaviour).
    if (recursion > kMaxRecursion || !inserted) {
      if (inserted) memo_.erase(it);
      h.add(0xABCDull);
      h.add(static_cast<uint64_t>(state));
      return PositionSignature{h.a, h.b, false};
    }
    for (const PdaByteEdge& e : st.bytes) {
      h.add((uint64_t{e.lo} << 8) | e.hi);
      PositionSignature t = compute(e.target, depth - 1, recursion + 1);
      h.add(t);
      pure = pure && t.pure;
    }
    h.add(0xFFFF'FFFFull);
    for (const PdaRefEdge& r : st.refs) {
      h.add(static_cast<uint64_t>(r.rule));
      // A nullable rule may return at once, so its continuation is compared at the same depth.
      h.add(compute(r.target, pda_.rules[r.rule].nullable ? depth : depth - 1, recursion + 1));
      pure = false;
    }
  } else {
    // Depth 0 still needs the entered rules: a top's expansions are part of its behaviour only
    // through later bytes, so nothing else is compared.
    h.add(0x5555ull);
  }
  PositionSignature sig{h.a, h.b, pure};
  memo.signature = sig;
  memo.done = true;
  return sig;
}

}  // namespace agentrt::grammars
