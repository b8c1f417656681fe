#include "grammars/grammar_ast.h"

#include <algorithm>

#include "grammars/utf8.h"

namespace agentrt::grammars {

Expr Expr::sequence(std::vector<Expr> items) {
  if (items.size() == 1) return std::move(items[0]);
  Expr e;
  e.kind = Kind::kSequence;
  e.children = std::move(items);
  return e;
}

Expr Expr::alternation(std::vector<Expr> items) {
  if (items.size() == 1) return std::move(items[0]);
  Expr e;
  e.kind = Kind::kAlternation;
  e.children = std::move(items);
  return e;
}

Expr Expr::literal(std::string bytes) {
  Expr e;
  e.kind = Kind::kLiteral;
  e.text = std::move(bytes);
  return e;
}

Expr Expr::char_class(std::vector<CodePointRange> ranges) {
  Expr e;
  e.kind = Kind::kCharClass;
  e.ranges = normalize_ranges(std::move(ranges));
  return e;
}

Expr Expr::rule_ref(int32_t rule) {
  Expr e;
  e.kind = Kind::kRuleRef;
  e.rule = rule;
  return e;
}

Expr Expr::repeat(Expr item, uint32_t min, uint32_t max) {
  Expr e;
  e.kind = Kind::kRepeat;
  e.children.push_back(std::move(item));
  e.min = min;
  e.max = max;
  return e;
}

std::vector<CodePointRange> normalize_ranges(std::vector<CodePointRange> ranges) {
  // Already sorted, disjoint, apart and without surrogates (most classes, e.g. [a] and the
  // ones schema compilers write): kept as they are.
  bool normal = true;
  for (size_t i = 0; i < ranges.size() && normal; ++i) {
    const CodePointRange r = ranges[i];
    normal = r.lo <= r.hi && r.hi <= kMaxCodePoint && (r.hi < 0xD800 || r.lo > 0xDFFF) &&
             (i == 0 || ranges[i - 1].hi + 1 < r.lo);
  }
  if (normal) return ranges;
  std::vector<CodePointRange> split;
  for (CodePointRange r : ranges) {
    if (r.lo > r.hi) continue;
    r.hi = std::min(r.hi, kMaxCodePoint);
    if (r.lo > kMaxCodePoint) continue;
    // Cut out the surrogates D800-DFFF.
    if (r.lo < 0xD800 && r.hi > 0xDFFF) {
      split.push_back({r.lo, 0xD7FF});
      split.push_back({0xE000, r.hi});
    } else if (r.lo >= 0xD800 && r.hi <= 0xDFFF) {
      continue;
    } else if (r.lo >= 0xD800 && r.lo <= 0xDFFF) {
      split.push_back({0xE000, r.hi});
    } else if (r.hi >= 0xD800 && r.hi <= 0xDFFF) {
      split.push_back({r.lo, 0xD7FF});
    } else {
      split.push_back(r);
    }
  }
  std::sort(split.begin(), split.end(),
            [](CodePointRange a, CodePointRange b) { return a.lo < b.lo; });
  std::vector<CodePointRange> out;
  for (CodePointRange r : split) {
    if (!out.empty() && r.lo <= out.back().hi + 1) {
      out.back().hi = std::max(out.back().hi, r.hi);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

std::vector<CodePointRange> complement_ranges(const std::vector<CodePointRange>& ranges) {
  std::vector<CodePointRange> norm = normalize_ranges(ranges);
  std::vector<CodePointRange> out;
  uint32_t next = 0;
  for (CodePointRange r : norm) {
    if (r.lo > next) out.push_back({next, r.lo - 1});
    next = r.hi + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return normalize_ranges(std::move(out));
}

}  // namespace agentrt::grammars
