// Random documents from a grammar (a random derivation of its rules), and random corruptions of
// them, for property tests of the matcher.
#pragma once

#include <random>
#include <string>

#include "grammars/grammar.h"
#include "grammars/utf8.h"

namespace agentrt::grammars::testing {

class GrammarSampler {
 public:
  GrammarSampler(const Grammar& g, uint32_t seed) : g_(g), rng_(seed) {}

  // Returns false when the derivation got too deep (the sample is then unusable).
  bool sample(std::string& out) {
    out.clear();
    budget_ = 400;
    return expand(g_.rules()[g_.root()].body, out, 0);
  }

  // Deletes, inserts or replaces a few bytes (the result may still be valid).
  std::string corrupt(std::string s) {
    int edits = 1 + rng_() % 2;
    static const std::string alphabet = "{}[]\",:0123456789abcxyz -+.\\\n\xC3\xA9";
    for (int i = 0; i < edits; ++i) {
      size_t pos = s.empty() ? 0 : rng_() % (s.size() + 1);
      char c = alphabet[rng_() % alphabet.size()];
      switch (rng_() % 3) {
        case 0:
          if (pos < s.size()) s.erase(pos, 1);
          break;
        case 1:
          s.insert(pos, 1, c);
          break;
        default:
          if (pos < s.size()) s[pos] = c;
      }
    }
    return s;
  }

  std::mt19937& rng() { return rng_; }

 private:
  bool expand(const Expr& e, std::string& out, int depth) {
    if (depth > 60 || --budget_ < 0) return false;
    switch (e.kind) {
      case Expr::Kind::kSequence:
        for (const Expr& c : e.children) {
          if (!expand(c, out, depth + 1)) return false;
        }
        return true;
      case Expr::Kind::kAlternation: {
        // Prefer earlier alternatives when deep, so recursion ends.
        size_t n = e.children.size();
        size_t pick = depth > 12 ? rng_() % std::min<size_t>(n, 2) : rng_() % n;
        return expand(e.children[pick], out, depth + 1);
      }
      case Expr::Kind::kLiteral:
        out += e.text;
        return true;
      case Expr::Kind::kCharClass: {
        if (e.ranges.empty()) return false;
        const CodePointRange& r = e.ranges[rng_() % e.ranges.size()];
        uint32_t span = r.hi - r.lo;
        uint32_t cp = r.lo + (span == 0 ? 0 : rng_() % std::min<uint32_t>(span + 1, 300));
        append_utf8(out, cp);
        return true;
      }
      case Expr::Kind::kRuleRef:
        return expand(g_.rules()[e.rule].body, out, depth + 1);
      case Expr::Kind::kRepeat: {
        uint32_t extra = depth > 12 ? 0 : rng_() % 4;
        uint32_t n = e.min + extra;
        if (e.max != Expr::kUnbounded) n = std::min(n, e.max);
        for (uint32_t i = 0; i < n; ++i) {
          if (!expand(e.children[0], out, depth + 1)) return false;
        }
        return true;
      }
    }
    return false;
  }

  const Grammar& g_;
  std::mt19937 rng_;
  int budget_ = 0;
};

}  // namespace agentrt::grammars::testing
