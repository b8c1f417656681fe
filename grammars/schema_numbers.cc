#include "grammars/schema_numbers.h"

#include <cmath>
#include <stdexcept>
#include <vector>

namespace agentrt::grammars {
namespace {

int compare_magnitude(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return a.size() < b.size() ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

std::string increment(std::string m) {
  int i = static_cast<int>(m.size()) - 1;
  while (i >= 0 && m[i] == '9') m[i--] = '0';
  if (i < 0) return "1" + m;
  ++m[i];
  return m;
}

std::string decrement(std::string m) {  // m > 0
  int i = static_cast<int>(m.size()) - 1;
  while (m[i] == '0') m[i--] = '9';
  --m[i];
  size_t nz = m.find_first_not_of('0');
  return nz == std::string::npos ? "0" : m.substr(nz);
}

std::string alternatives(const std::vector<std::string>& alts) {
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

std::string digit_class(char lo, char hi) {
  if (lo == hi) return std::string("\"") + lo + "\"";
  if (lo == '0' && hi == '9') return "[0-9]";
  return std::string("[") + lo + "-" + hi + "]";
}

std::string any_digits(size_t n) {
  if (n == 0) return "";
  if (n == 1) return "[0-9]";
  return "[0-9]{" + std::to_string(n) + "}";
}

bool all_of(const std::string& s, char c) { return s.find_first_not_of(c) == std::string::npos; }

// Digit strings of equal length n in [lo, hi] (leading zeros allowed: these are tails).
std::string range_same_length(const std::string& lo, const std::string& hi) {
  const size_t n = lo.size();
  if (n == 0) return "";
  if (lo == hi) return "\"" + lo + "\"";
  const std::string lo_tail = lo.substr(1), hi_tail = hi.substr(1);
  auto join = [](const std::string& a, const std::string& b) { return b.empty() ? a : a + " " + b; };
  if (lo[0] == hi[0]) return join(digit_class(lo[0], lo[0]), range_same_length(lo_tail, hi_tail));
  if (all_of(lo_tail, '0') && all_of(hi_tail, '9')) {
    return join(digit_class(lo[0], hi[0]), any_digits(n - 1));
  }
  std::vector<std::string> alts;
  char mid_lo = static_cast<char>(lo[0] + 1), mid_hi = static_cast<char>(hi[0] - 1);
  if (all_of(lo_tail, '0')) {
    mid_lo = lo[0];
  } else {
    alts.push_back(join(digit_class(lo[0], lo[0]), range_same_length(lo_tail, std::string(n - 1, '9'))));
  }
  const bool hi_full = all_of(hi_tail, '9');
  if (hi_full) mid_hi = hi[0];
  if (mid_lo <= mid_hi) alts.push_back(join(digit_class(mid_lo, mid_hi), any_digits(n - 1)));
  if (!hi_full) {
    alts.push_back(join(digit_class(hi[0], hi[0]), range_same_length(std::string(n - 1, '0'), hi_tail)));
  }
  return alternatives(alts);
}

// A non-negative decimal split into integer magnitude and fraction digits (no trailing zeros).
struct Decimal {
  bool negative = false;
  std::string int_part = "0";
  std::string frac;
};

Decimal parse_decimal(const std::string& text) {
  // text is a JSON number as nlohmann dumps it (shortest round-trip form, maybe an exponent).
  Decimal d;
  size_t i = 0;
  if (text[0] == '-') d.negative = true, i = 1;
  std::string digits;
  long point = -1;
  long exp = 0;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (c == '.') {
      point = static_cast<long>(digits.size());
    } else if (c == 'e' || c == 'E') {
      exp = std::stol(text.substr(i + 1));
      break;
    } else {
      digits += c;
    }
  }
  if (point < 0) point = static_cast<long>(digits.size());
  point += exp;
  if (point < 0) {
    digits = std::string(static_cast<size_t>(-point), '0') + digits;
    point = 0;
  }
  if (point > static_cast<long>(digits.size())) digits += std::string(point - digits.size(), '0');
  std::string ip = digits.substr(0, point), fp = digits.substr(point);
  size_t nz = ip.find_first_not_of('0');
  d.int_part = nz == std::string::npos ? "0" : ip.substr(nz);
  while (!fp.empty() && fp.back() == '0') fp.pop_back();
  d.frac = fp;
  if (d.int_part == "0" && d.frac.empty()) d.negative = false;
  return d;
}

int compare_decimal_magnitude(const Decimal& a, const Decimal& b) {
  int c = compare_magnitude(a.int_part, b.int_part);
  if (c != 0) return c;
  size_t n = std::max(a.frac.size(), b.frac.size());
  std::string fa = a.frac + std::string(n - a.frac.size(), '0');
  std::string fb = b.frac + std::string(n - b.frac.size(), '0');
  return fa < fb ? -1 : fa > fb ? 1 : 0;
}

Decimal abs_of(Decimal d) {
  d.negative = false;
  return d;
}

int compare_signed(const Decimal& a, const Decimal& b) {
  if (a.negative != b.negative) return a.negative ? -1 : 1;
  int c = compare_decimal_magnitude(a, b);
  return a.negative ? -c : c;
}

struct DecBound {
  Decimal value;  // non-negative magnitude
  bool inclusive = true;
};

// Fraction suffix grammars (the text after the integer digits: "" or "." digits).
struct FractionRules {
  int max_digits = -1;  // multipleOf 10^-d
  std::string any() const {
    if (max_digits < 0) return "(\".\" [0-9]+)?";
    if (max_digits == 0) return "(\".\" \"0\"+)?";
    return "(\".\" [0-9]{1," + std::to_string(max_digits) + "} \"0\"*)?";
  }
  std::string zero() const { return "(\".\" \"0\"+)?"; }
  std::optional<std::string> nonzero() const {
    if (max_digits == 0) return std::nullopt;
    if (max_digits < 0) return "\".\" \"0\"* [1-9] [0-9]*";
    // A non-zero digit among the first d: F(1) = [1-9], F(j) = "0" F(j-1) | [1-9] [0-9]{0,j-1}.
    std::string out = "[1-9]";
    for (int j = 2; j <= max_digits; ++j) {
      out = "(\"0\" " + out + " | [1-9] [0-9]{0," + std::to_string(j - 1) + "})";
    }
    return "\".\" " + out + " \"0\"*";
  }
};

// Nonempty fraction digit strings D with 0.D >= / > / <= / < 0.t (t nonempty, no trailing 0).
std::string frac_ge(const std::string& t, bool strict) {
  std::vector<std::string> alts;
  if (t[0] < '9') alts.push_back(digit_class(static_cast<char>(t[0] + 1), '9') + " [0-9]*");
  const std::string rest = t.substr(1);
  if (rest.empty()) {
    alts.push_back(digit_class(t[0], t[0]) + (strict ? " \"0\"* [1-9] [0-9]*" : " [0-9]*"));
  } else {
    alts.push_back(digit_class(t[0], t[0]) + " " + frac_ge(rest, strict));
  }
  return alternatives(alts);
}

std::optional<std::string> frac_le(const std::string& t, bool strict) {
  std::vector<std::string> alts;
  if (t[0] > '0') alts.push_back(digit_class('0', static_cast<char>(t[0] - 1)) + " [0-9]*");
  const std::string rest = t.substr(1);
  if (rest.empty()) {
    if (!strict) alts.push_back(digit_class(t[0], t[0]) + " \"0\"*");
  } else {
    auto inner = frac_le(rest, strict);
    alts.push_back(digit_class(t[0], t[0]) + (inner ? " (" + *inner + ")?" : ""));
  }
  if (alts.empty()) return std::nullopt;
  return alternatives(alts);
}

// Magnitudes m in [lo, hi] (hi absent = unbounded) as "digits suffix" alternatives.
void magnitude_pieces(const DecBound& lo, const std::optional<DecBound>& hi, bool integer,
                      const FractionRules& fr, std::vector<std::string>& out) {
  if (hi) {
    int c = compare_decimal_magnitude(lo.value, hi->value);
    if (c > 0 || (c == 0 && !(lo.inclusive && hi->inclusive))) return;
  }
  auto digits = [](const std::string& a, const std::optional<std::string>& b) {
    return digit_range_ebnf(a, b);
  };
  if (integer) {
    std::string a = lo.value.int_part;
    if (!lo.value.frac.empty() || !lo.inclusive) a = increment(a);
    std::optional<std::string> b;
    if (hi) {
      b = hi->value.int_part;
      if (hi->value.frac.empty() && !hi->inclusive) {
        if (*b == "0") return;
        b = decrement(*b);
      }
      if (compare_magnitude(a, *b) > 0) return;
    }
    out.push_back(digits(a, b));
    return;
  }
  if (fr.max_digits >= 0 && (!lo.value.frac.empty() || (hi && !hi->value.frac.empty()))) {
    throw std::invalid_argument("multipleOf with fractional bounds is not supported");
  }
  const std::string& a = lo.value.int_part;
  const bool same_int = hi && hi->value.int_part == a;
  // Integer part a with the lower fraction condition (and the upper one when same_int).
  std::optional<std::string> low_suffix;
  if (lo.value.frac.empty()) {
    low_suffix = lo.inclusive ? std::optional<std::string>(fr.any()) : fr.nonzero();
  } else {
    low_suffix = "\".\" " + frac_ge(lo.value.frac, !lo.inclusive);
  }
  if (same_int) {
    if (hi->value.frac.empty()) {
      // m == a exactly (lower bound has no fraction and is inclusive, checked above).
      out.push_back("\"" + a + "\" " + fr.zero());
      return;
    }
    if (!lo.value.frac.empty() || !lo.inclusive) {
      throw std::invalid_argument("a number range within one integer is not supported");
    }
    auto up = frac_le(hi->value.frac, !hi->inclusive);
    out.push_back("\"" + a + "\" (\".\" " + (up ? *up : std::string("\"0\"+")) + ")?");
    return;
  }
  if (low_suffix) out.push_back("\"" + a + "\" " + *low_suffix);
  // Whole integer parts strictly between.
  const std::string mid_lo = increment(a);
  if (!hi) {
    out.push_back(digits(mid_lo, std::nullopt) + " " + fr.any());
    return;
  }
  const std::string& b = hi->value.int_part;
  if (compare_magnitude(mid_lo, b) < 0) out.push_back(digits(mid_lo, decrement(b)) + " " + fr.any());
  // Integer part b with the upper fraction condition.
  if (hi->value.frac.empty()) {
    if (hi->inclusive) out.push_back("\"" + b + "\" " + fr.zero());
  } else {
    auto up = frac_le(hi->value.frac, !hi->inclusive);
    out.push_back("\"" + b + "\" (\".\" " + (up ? *up : std::string("\"0\"+")) + ")?");
  }
}


}  // namespace

std::string number_literal_ebnf(const std::string& json_text) {
  Decimal d = parse_decimal(json_text);
  if (d.int_part.size() + d.frac.size() > 40) return "\"" + json_text + "\"";  // keep it literal
  std::string out = d.negative ? "\"-" + d.int_part : "\"" + d.int_part;
  if (d.frac.empty()) return out + "\" (\".\" \"0\"+)?";
  return out + "." + d.frac + "\" \"0\"*";
}

std::string digit_range_ebnf(const std::string& lo, const std::optional<std::string>& hi) {
  std::vector<std::string> alts;
  if (hi && lo.size() == hi->size()) return range_same_length(lo, *hi);
  alts.push_back(range_same_length(lo, std::string(lo.size(), '9')));
  const size_t lo_len = lo.size();
  if (!hi) {
    alts.push_back("[1-9] [0-9]{" + std::to_string(lo_len) + ",}");
    return alternatives(alts);
  }
  const size_t hi_len = hi->size();
  if (hi_len > lo_len + 1) {
    const size_t a = lo_len, b = hi_len - 2;
    alts.push_back("[1-9] [0-9]{" + std::to_string(a) + (a == b ? "" : "," + std::to_string(b)) + "}");
  }
  alts.push_back(range_same_length("1" + std::string(hi_len - 1, '0'), *hi));
  return alternatives(alts);
}

NumberConstraints number_constraints(const nlohmann::json& schema, bool integer,
                                     const std::string& path) {
  NumberConstraints c;
  c.integer = integer;
  auto fail = [&](const std::string& what) { throw std::invalid_argument(path + ": " + what); };
  auto number_at = [&](const char* key) -> std::optional<std::string> {
    auto it = schema.find(key);
    if (it == schema.end() || it->is_boolean()) return std::nullopt;
    if (!it->is_number()) fail(std::string("'") + key + "' must be a number");
    return it->dump();
  };
  auto flag_at = [&](const char* key) {
    auto it = schema.find(key);
    return it != schema.end() && it->is_boolean() && it->get<bool>();
  };
  // Keeps the tighter of two bounds on the same side.
  auto tighten = [](std::optional<NumberBound>& cur, NumberBound nb, bool lower) {
    if (!cur) {
      cur = nb;
      return;
    }
    Decimal a = parse_decimal(cur->value), b = parse_decimal(nb.value);
    int cmp = compare_signed(b, a);
    if (cmp == 0) {
      cur->inclusive = cur->inclusive && nb.inclusive;
    } else if ((cmp > 0) == lower) {
      cur = nb;
    }
  };
  if (auto v = number_at("minimum")) tighten(c.lower, {*v, !flag_at("exclusiveMinimum")}, true);
  if (auto v = number_at("maximum")) tighten(c.upper, {*v, !flag_at("exclusiveMaximum")}, false);
  if (auto v = number_at("exclusiveMinimum")) tighten(c.lower, {*v, false}, true);
  if (auto v = number_at("exclusiveMaximum")) tighten(c.upper, {*v, false}, false);
  auto mult = schema.find("multipleOf");
  if (mult != schema.end()) {
    if (!mult->is_number() || mult->get<double>() <= 0) fail("'multipleOf' must be a positive number");
    Decimal m = parse_decimal(mult->dump());
    if (m.frac.empty()) {
      if (m.int_part != "1") {
        if (m.int_part.size() > 3) fail("multipleOf larger than 999 is not supported");
        if (c.lower || c.upper) fail("multipleOf together with bounds is not supported");
        c.divisor = std::stoi(m.int_part);
      }
      c.integer = true;  // multiples of a positive integer are integers
    } else if (m.int_part == "0" && m.frac.back() == '1' &&
               all_of(m.frac.substr(0, m.frac.size() - 1), '0')) {
      if (!c.integer) c.max_fraction_digits = static_cast<int>(m.frac.size());
    } else {
      fail("multipleOf " + mult->dump() + " is not supported (only integers and 10^-k)");
    }
  }
  return c;
}

std::optional<std::string> number_ebnf(
    const NumberConstraints& c, const std::string& rule_prefix,
    std::vector<std::pair<std::string, std::string>>& extra_rules) {
  if (c.divisor) {
    // Divisibility automaton over decimal digits: state r = value so far mod k.
    const int k = *c.divisor;
    auto state = [&](int r) { return rule_prefix + "-mod" + std::to_string(r); };
    for (int r = 0; r < k; ++r) {
      std::vector<std::string> alts;
      for (int t = 0; t < k; ++t) {
        std::string cls;
        for (int d = 0; d <= 9; ++d) {
          if ((10 * r + d) % k == t) cls += static_cast<char>('0' + d);
        }
        if (cls.empty()) continue;
        alts.push_back("[" + cls + "] " + state(t));
      }
      extra_rules.emplace_back(state(r), alternatives(alts) + (r == 0 ? "?" : ""));
    }
    std::vector<std::string> first;
    for (int t = 0; t < k; ++t) {
      std::string cls;
      for (int d = 1; d <= 9; ++d) {
        if (d % k == t) cls += static_cast<char>('0' + d);
      }
      if (!cls.empty()) first.push_back("[" + cls + "] " + state(t));
    }
    return "(\"0\" | \"-\"? " + alternatives(first) + ")";
  }
  if (!c.lower && !c.upper) {
    if (c.integer) return std::string("\"-\"? (\"0\" | [1-9] [0-9]*)");
    FractionRules fr{c.max_fraction_digits};
    if (c.max_fraction_digits >= 0) return "\"-\"? (\"0\" | [1-9] [0-9]*) " + fr.any();
    return std::string(
        "\"-\"? (\"0\" | [1-9] [0-9]*) (\".\" [0-9]+)? ([eE] [+\\-]? [0-9]+)?");
  }
  FractionRules fr{c.max_fraction_digits};
  std::optional<Decimal> lo, hi;
  if (c.lower) lo = parse_decimal(c.lower->value);
  if (c.upper) hi = parse_decimal(c.upper->value);
  std::vector<std::string> alts;
  // Negative numbers: x = -m with m > 0.
  if (!lo || lo->negative) {
    DecBound mlo{Decimal{}, false};
    if (hi && hi->negative) mlo = DecBound{abs_of(*hi), c.upper->inclusive};
    std::optional<DecBound> mhi;
    if (lo) mhi = DecBound{abs_of(*lo), c.lower->inclusive};
    std::vector<std::string> neg;
    magnitude_pieces(mlo, mhi, c.integer, fr, neg);
    if (!neg.empty()) alts.push_back("\"-\" " + alternatives(neg));
  }
  // Non-negative numbers.
  if (!hi || !hi->negative) {
    DecBound mlo{Decimal{}, true};
    if (lo && !lo->negative) mlo = DecBound{*lo, c.lower->inclusive};
    std::optional<DecBound> mhi;
    if (hi) mhi = DecBound{*hi, c.upper->inclusive};
    magnitude_pieces(mlo, mhi, c.integer, fr, alts);
  }
  if (alts.empty()) return std::nullopt;
  return alternatives(alts);
}

}  // namespace agentrt::grammars
