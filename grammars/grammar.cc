#include "grammars/grammar.h"

#include <cstdio>

#include "grammars/ebnf_parser.h"
#include "grammars/regex_parser.h"
#include "grammars/utf8.h"

namespace agentrt::grammars {
namespace {

void check_refs(const Expr& e, size_t num_rules, const std::string& rule) {
  if (e.kind == Expr::Kind::kRuleRef && (e.rule < 0 || static_cast<size_t>(e.rule) >= num_rules)) {
    throw GrammarError("rule '" + rule + "' references rule #" + std::to_string(e.rule) +
                       ", which does not exist");
  }
  for (const Expr& c : e.children) check_refs(c, num_rules, rule);
}

void append_escaped(std::string& out, uint32_t cp, bool in_class) {
  char buf[16];
  if (cp == '"' && !in_class) {
    out += "\\\"";
  } else if (cp == '\\') {
    out += "\\\\";
  } else if (in_class && (cp == ']' || cp == '-' || cp == '^' || cp == '[')) {
    out += '\\';
    out += static_cast<char>(cp);
  } else if (cp == '\n') {
    out += "\\n";
  } else if (cp == '\r') {
    out += "\\r";
  } else if (cp == '\t') {
    out += "\\t";
  } else if (cp < 0x20 || cp == 0x7F) {
    std::snprintf(buf, sizeof buf, "\\x%02X", cp);
    out += buf;
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp <= 0xFFFF && (cp < 0xA0 || cp >= 0xD800)) {
    std::snprintf(buf, sizeof buf, "\\u%04X", cp);
    out += buf;
  } else if (cp > 0xFFFF) {
    std::snprintf(buf, sizeof buf, "\\U%08X", cp);
    out += buf;
  } else {
    append_utf8(out, cp);
  }
}

void print(const Expr& e, const std::vector<GrammarRule>& rules, std::string& out, bool atomic) {
  switch (e.kind) {
    case Expr::Kind::kSequence:
    case Expr::Kind::kAlternation: {
      if (e.children.empty()) {
        out += "\"\"";
        return;
      }
      bool alt = e.kind == Expr::Kind::kAlternation;
      bool parens = atomic || alt;
      if (parens) out += '(';
      for (size_t i = 0; i < e.children.size(); ++i) {
        if (i) out += alt ? " | " : " ";
        print(e.children[i], rules, out, !alt);
      }
      if (parens) out += ')';
      return;
    }
    case Expr::Kind::kLiteral: {
      out += '"';
      size_t pos = 0;
      while (pos < e.text.size()) {
        int32_t cp = decode_utf8(e.text, pos);
        if (cp < 0) {
          // Not UTF-8: write the byte as a code point escape (same bytes only below 0x80).
          append_escaped(out, static_cast<uint8_t>(e.text[pos]), false);
          ++pos;
        } else {
          append_escaped(out, static_cast<uint32_t>(cp), false);
        }
      }
      out += '"';
      return;
    }
    case Expr::Kind::kCharClass: {
      if (e.ranges.empty()) {
        out += "[^\\x00-\\U0010FFFF]";
        return;
      }
      if (e.ranges.size() == 2 && e.ranges[0].lo == 0 && e.ranges[0].hi == 0xD7FF &&
          e.ranges[1].lo == 0xE000 && e.ranges[1].hi == kMaxCodePoint) {
        out += '.';
        return;
      }
      out += '[';
      for (CodePointRange r : e.ranges) {
        append_escaped(out, r.lo, true);
        if (r.hi != r.lo) {
          out += '-';
          append_escaped(out, r.hi, true);
        }
      }
      out += ']';
      return;
    }
    case Expr::Kind::kRuleRef:
      out += rules[e.rule].name;
      return;
    case Expr::Kind::kRepeat: {
      print(e.children[0], rules, out, true);
      if (e.min == 0 && e.max == Expr::kUnbounded) {
        out += '*';
      } else if (e.min == 1 && e.max == Expr::kUnbounded) {
        out += '+';
      } else if (e.min == 0 && e.max == 1) {
        out += '?';
      } else if (e.max == Expr::kUnbounded) {
        out += '{' + std::to_string(e.min) + ",}";
      } else if (e.min == e.max) {
        out += '{' + std::to_string(e.min) + '}';
      } else {
        out += '{' + std::to_string(e.min) + ',' + std::to_string(e.max) + '}';
      }
      return;
    }
  }
}

}  // namespace

Grammar Grammar::from_ebnf(std::string_view text, std::string_view root_rule) {
  ParsedEbnf parsed = parse_ebnf(text, root_rule);
  // The parser has resolved every reference (an undefined rule is its error): no second walk
  // over a megabyte of schema grammar to check them.
  Grammar g;
  g.rules_ = std::move(parsed.rules);
  g.root_ = parsed.root;
  return g;
}

Grammar Grammar::from_regex(std::string_view pattern) {
  std::vector<GrammarRule> rules;
  rules.push_back(GrammarRule{"root", parse_regex(pattern)});
  return from_rules(std::move(rules), 0);
}

Grammar Grammar::from_rules(std::vector<GrammarRule> rules, int32_t root) {
  if (root < 0 || static_cast<size_t>(root) >= rules.size()) {
    throw GrammarError("grammar root rule #" + std::to_string(root) + " does not exist");
  }
  for (const GrammarRule& r : rules) check_refs(r.body, rules.size(), r.name);
  Grammar g;
  g.rules_ = std::move(rules);
  g.root_ = root;
  return g;
}

std::string Grammar::to_ebnf() const {
  std::string out;
  // The root rule is printed as `root` so that from_ebnf() finds it with the default name.
  std::vector<GrammarRule> named = rules_;
  if (named[root_].name != "root") {
    for (GrammarRule& r : named) {
      if (r.name == "root") r.name = "root_";
    }
    named[root_].name = "root";
  }
  for (size_t i = 0; i < named.size(); ++i) {
    size_t idx = i == 0 ? root_ : (i <= static_cast<size_t>(root_) ? i - 1 : i);
    out += named[idx].name + " ::= ";
    print(named[idx].body, named, out, false);
    out += '\n';
  }
  return out;
}

}  // namespace agentrt::grammars
