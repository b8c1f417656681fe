// Objects: properties in `properties` order, required ones present, additional and pattern
// properties interleaved anywhere, and min/maxProperties counted, as a chain of rules
// S(i, c) = "named property i is next, c members written so far (saturating)".
#include <algorithm>

#include "grammars/json_schema_compiler.h"
#include "grammars/schema_merge.h"
#include "grammars/schema_pattern.h"
#include "grammars/schema_validate.h"

namespace agentrt::grammars {
namespace {

bool is_trivial_schema(const SchemaJson& s) {
  if (s.is_boolean()) return s.get<bool>();
  if (!s.is_object()) return false;
  for (const auto& [k, v] : s.items()) {
    if (is_vocabulary_keyword(k) && !is_annotation_keyword(k)) return false;
  }
  return true;
}

// Objects with at most this many named properties accept them in any order (2^n states).
constexpr size_t kMaxOrderFree = 6;
// Larger objects track only their required properties, up to this many (2^n states).
constexpr size_t kMaxTrackedRequired = 9;
// ... and while the grammar stays this small (alternatives over all states).
constexpr size_t kMaxOrderFreeAlternatives = 16384;

bool is_false_schema(const SchemaJson& s) { return s.is_boolean() && !s.get<bool>(); }

std::string join(const std::vector<std::string>& alts) {
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

// A state of an object: `lead` (the separator, or nothing before the first member) once, then
// one of `alts` (each a member and the next state), optional where the object may end.
std::string state_body(const std::string& lead, const std::vector<std::string>& alts,
                       bool may_end) {
  if (alts.empty()) return "\"\"";
  std::string body = lead + join(alts);
  return may_end ? "(" + body + ")?" : body;
}

SchemaJson all_of(std::vector<SchemaJson> parts) {
  if (parts.size() == 1) return parts[0];
  return SchemaJson{{"allOf", SchemaJson(parts)}};
}

}  // namespace

std::optional<std::string> JsonSchemaCompiler::order_free_object(
    const std::vector<OrderFreeMember>& named, const std::optional<std::string>& extra,
    size_t min_props, std::optional<size_t> max_props, const std::string& path) {
  // States (mask, c): mask = tracked properties written so far (each at most once, any order),
  // c = members so far, saturating at `cap`. Untracked properties may come any time.
  const size_t n = named.size();
  std::vector<size_t> bit(n, 0);
  size_t tracked = 0, required_mask = 0;
  for (size_t j = 0; j < n; ++j) {
    if (!named[j].tracked) continue;
    bit[j] = size_t{1} << tracked++;
    if (named[j].required) required_mask |= bit[j];
  }
  const size_t masks = size_t{1} << tracked;
  const size_t cap = max_props ? *max_props : std::max<size_t>(min_props, 1);
  // Every state lists the members it may take next: each member is a rule, written and
  // determinised once instead of once per state. A state is then a few automaton states (one
  // rule call per member) instead of a trie of the remaining keys with each value's start; the
  // parse holds one stack per candidate member until the key's bytes tell them apart (keys are
  // distinct quoted strings, so none is a prefix of another). Halves the automaton of
  // Kubernetes schemas (kb_240: 44K -> 22K states).
  const bool many_states = masks * (cap + 1) >= 8;
  std::vector<std::string> member(n);
  for (size_t j = 0; j < n; ++j) {
    member[j] = named[j].member;
    if (many_states) member[j] = new_rule(path + "-member" + std::to_string(j), member[j]);
  }
  // The untracked members and additional properties may come in every state, each going to the
  // state with one more member: one rule for all of them (also for the additional properties
  // alone), written once instead of once per state (in large objects they were most of the text
  // and automaton).
  std::optional<std::string> any_member;
  {
    std::vector<std::string> untracked;
    for (size_t j = 0; j < n; ++j) {
      if (!named[j].tracked) untracked.push_back(member[j]);
    }
    if (extra) untracked.push_back(*extra);
    const bool one_expression =
        untracked.size() == 1 && many_states && untracked[0].find(' ') != std::string::npos;
    if (untracked.size() >= 2 || one_expression) {
      any_member = new_rule(path + "-any-member", join(untracked));
    }
  }
  auto idx = [&](size_t mask, size_t c) { return mask * (cap + 1) + c; };
  auto next_count = [&](size_t c) -> std::optional<size_t> {
    if (max_props) {
      if (c + 1 > *max_props) return std::nullopt;
      return c + 1;
    }
    return std::min(c + 1, cap);
  };
  auto can_end = [&](size_t mask, size_t c) {
    return (mask & required_mask) == required_mask && c >= min_props;
  };
  std::vector<char> live(masks * (cap + 1), 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t mask = masks; mask-- > 0;) {
      for (size_t c = cap + 1; c-- > 0;) {
        if (live[idx(mask, c)]) continue;
        bool l = can_end(mask, c);
        if (auto nc = next_count(c)) {
          for (size_t j = 0; j < n && !l; ++j) {
            if (!(mask & bit[j])) l = live[idx(mask | bit[j], *nc)];
          }
          if (extra && live[idx(mask, *nc)]) l = true;
        }
        if (l) {
          live[idx(mask, c)] = 1;
          changed = true;
        }
      }
    }
  }
  if (!live[idx(0, 0)]) return std::nullopt;
  // Names by state index (empty: not referenced yet), states in the order first referenced.
  std::vector<std::string> state_names(masks * (cap + 1));
  std::vector<std::pair<size_t, size_t>> todo;
  auto state_ref = [&](size_t mask, size_t c) -> const std::string& {
    std::string& name = state_names[idx(mask, c)];
    if (name.empty()) {
      name = reserve_name(path + "-m" + std::to_string(mask) + "c" + std::to_string(c));
      todo.emplace_back(mask, c);
    }
    return name;
  };
  const std::string start = state_ref(0, 0);
  std::vector<std::pair<size_t, std::vector<const std::string*>>> by_next;
  std::vector<std::string> alts;
  for (size_t t = 0; t < todo.size(); ++t) {
    const auto [mask, c] = todo[t];
    // Members going to the same state share the separator and the state: `lead (a | b) next`,
    // not `lead a next | lead b next` (the same language; in large objects the untracked
    // members all go to one state, and the repeats were much of the text and the automaton).
    by_next.clear();
    auto add = [&](const std::string& what, size_t next_mask, size_t next_c) {
      const size_t next = idx(next_mask, next_c);
      state_ref(next_mask, next_c);
      auto it = std::find_if(by_next.begin(), by_next.end(),
                             [&](const auto& group) { return group.first == next; });
      if (it == by_next.end()) it = by_next.insert(by_next.end(), {next, {}});
      it->second.push_back(&what);
    };
    if (auto nc = next_count(c)) {
      for (size_t j = 0; j < n; ++j) {
        if (any_member && !named[j].tracked) continue;
        const size_t next = mask | bit[j];
        if (!(mask & bit[j]) && live[idx(next, *nc)]) add(member[j], next, *nc);
      }
      if (any_member && live[idx(mask, *nc)]) {
        add(*any_member, mask, *nc);
      } else if (!any_member && extra && live[idx(mask, *nc)]) {
        add(*extra, mask, *nc);
      }
    }
    alts.clear();
    for (const auto& [next, members] : by_next) {
      std::string alt = members.size() > 1 ? "(" : "";
      for (size_t i = 0; i < members.size(); ++i) {
        if (i) alt += " | ";
        alt += *members[i];
      }
      if (members.size() > 1) alt += ')';
      alt += ' ';
      alt += state_names[next];
      alts.push_back(std::move(alt));
    }
    define(state_names[idx(mask, c)], state_body(c == 0 ? "" : sep(), alts, can_end(mask, c)));
  }
  return "\"{\" " + ws() + start + " " + ws() + "\"}\"";
}

std::optional<std::string> JsonSchemaCompiler::compile_object(const SchemaJson& s,
                                                              const std::string& path) {
  const std::string where = display_path(path);
  auto fail = [&](const std::string& what) -> std::optional<std::string> {
    throw GrammarError(where + ": " + what);
  };
  // Read in place: a copy of `properties` at every object copied each subtree once per object
  // above it.
  const SchemaJson no_members = SchemaJson::object();
  auto object_at = [&](const char* key) -> const SchemaJson& {
    auto it = s.find(key);
    if (it == s.end()) return no_members;
    if (!it->is_object()) fail(std::string("'") + key + "' must be an object");
    return *it;
  };
  const SchemaJson& props = object_at("properties");
  const SchemaJson& pattern_props = object_at("patternProperties");
  std::vector<std::string> required;
  if (s.contains("required")) {
    if (!s["required"].is_array()) fail("'required' must be an array");
    for (const auto& r : s["required"]) {
      if (!r.is_string()) fail("'required' must list strings");
      if (std::find(required.begin(), required.end(), r.get<std::string>()) == required.end()) {
        required.push_back(r.get<std::string>());
      }
    }
  }
  const SchemaJson addl = s.contains("additionalProperties")
                              ? s["additionalProperties"]
                              : SchemaJson(options_.allow_additional_by_default);
  const SchemaJson names = s.value("propertyNames", SchemaJson(true));
  const size_t min_props = schema_count(s, "minProperties", path).value_or(0);
  const std::optional<size_t> max_props = schema_count(s, "maxProperties", path);
  if (max_props && *max_props < min_props) return std::nullopt;

  struct Pattern {
    std::string source;
    ParsedPattern parsed;
    SchemaJson schema;
  };
  std::vector<Pattern> patterns;
  for (const auto& [p, ps] : pattern_props.items()) {
    try {
      patterns.push_back({p, parse_pattern(p), ps});
    } catch (const std::invalid_argument& e) {
      fail(std::string("patternProperties: ") + e.what());
    }
  }
  auto matching = [&](const std::string& key) {
    std::vector<SchemaJson> out;
    for (const auto& p : patterns) {
      if (pattern_matches(p.parsed, key)) out.push_back(p.schema);
    }
    return out;
  };
  auto name_ok = [&](const std::string& key) {
    if (is_trivial_schema(names)) return true;
    try {
      return schema_accepts(names, SchemaJson(key));
    } catch (const std::invalid_argument& e) {
      throw GrammarError(where + "/propertyNames: " + e.what());
    }
  };

  struct Named {
    std::string member;  // EBNF for "key":value
    bool required;
  };
  std::vector<Named> named;
  std::vector<std::string> named_keys;
  auto add_named = [&](const std::string& key, const SchemaJson& value_schema, bool req,
                       const std::string& vpath) -> bool {
    if (!name_ok(key)) return !req;
    auto e = compile(value_schema, vpath);
    if (!e) return !req;
    named.push_back({kv(ebnf_literal(SchemaJson(key).dump()), *e), req});
    return true;
  };
  for (const auto& [key, ps] : props.items()) {
    named_keys.push_back(key);
    const bool req = std::find(required.begin(), required.end(), key) != required.end();
    std::vector<SchemaJson> parts = {ps};
    auto m = matching(key);
    if (!m.empty()) {
      // The pattern alternative below can also produce this key, with the pattern schema only.
      if (!is_trivial_schema(ps)) {
        fail("property '" + key +
             "' also matches patternProperties; only supported when its own schema is empty");
      }
      parts = m;
    }
    if (!add_named(key, all_of(parts), req, path + "/properties/" + pointer_token(key))) {
      return std::nullopt;
    }
  }
  for (const auto& key : required) {
    if (props.contains(key)) continue;
    named_keys.push_back(key);
    auto m = matching(key);
    if (!add_named(key, m.empty() ? addl : all_of(m), true, path + "/required"))
      return std::nullopt;
  }

  // Members other than the named ones.
  std::vector<std::string> extras;
  const std::string quote = "\"\\\"\"";
  if (!patterns.empty()) {
    if (!is_trivial_schema(names))
      fail("propertyNames together with patternProperties is not supported");
    for (const auto& p : patterns) {
      if (!(p.schema == patterns[0].schema)) {
        fail("several patternProperties with different schemas are not supported");
      }
    }
    if (!is_false_schema(addl) && !is_trivial_schema(patterns[0].schema)) {
      fail(
          "additionalProperties together with non-empty patternProperties schemas is not "
          "supported");
    }
    auto value = compile(patterns[0].schema, path + "/patternProperties");
    if (value) {
      for (const auto& p : patterns) {
        std::string content;
        try {
          content = regex_to_json_content(p.parsed.root);
        } catch (const std::invalid_argument& e) {
          fail(std::string("patternProperties: ") + e.what());
        }
        extras.push_back(kv(quote + " " + content + " " + quote, *value));
      }
    }
  }
  if (!is_false_schema(addl)) {
    auto value = compile(addl, path + "/additionalProperties");
    if (value) {
      std::optional<std::string> key;
      if (!is_trivial_schema(names)) {
        if (!named_keys.empty())
          fail("propertyNames together with properties and additional properties is not supported");
        key = compile(merge_schemas(SchemaJson{{"type", "string"}}, names, path),
                      path + "/propertyNames");
      } else if (named_keys.empty()) {
        key = generic("string");
      } else {
        auto shared_exit = [this](const std::string& body) {
          auto [it, inserted] = key_exits_.try_emplace(body);
          if (inserted) it->second = new_rule("key-exit", body);
          return it->second;
        };
        key = new_rule(path + "-key",
                       quote + " " +
                           json_string_tail_excluding(named_keys, generic("string-tail"),
                                                      generic("string-other-tail"), shared_exit));
      }
      if (key) extras.push_back(kv(*key, *value));
    }
  }
  std::optional<std::string> extra;
  if (!extras.empty()) {
    extra = join(extras);
    if (extra->size() > 60) extra = new_rule(path + "-extra", *extra);
  }

  if (!options_.strict_property_order && named.size() > 1) {
    size_t required_count = 0;
    for (const auto& m : named) required_count += m.required ? 1 : 0;
    // Small objects: every property at most once, any order. Larger ones without
    // minProperties: required properties at most once, optional ones any number of times (a
    // repeated key is valid JSON for the schema: its value is valid whichever one a parser
    // keeps); else `properties` order.
    const bool track_all = named.size() <= kMaxOrderFree;
    const size_t cap = max_props ? *max_props : 1;
    const bool small_enough =
        required_count <= kMaxTrackedRequired &&
        (size_t{1} << required_count) * (cap + 1) * named.size() <= kMaxOrderFreeAlternatives;
    if (track_all || (small_enough && min_props == 0)) {
      std::vector<OrderFreeMember> members;
      for (const auto& m : named)
        members.push_back({m.member, m.required, track_all || m.required});
      return order_free_object(members, extra, min_props, max_props, path);
    }
  }
  // States (i, c): named properties before i are settled, c = members so far (saturating at
  // `cap`). From (i, c) the next member is a named property j >= i (skipping optional ones) or
  // an extra member (staying at i), so every object text has exactly one derivation.
  const size_t n = named.size();
  const size_t cap = max_props ? *max_props : std::max<size_t>(min_props, 1);
  auto idx = [&](size_t i, size_t c) { return i * (cap + 1) + c; };
  auto next_count = [&](size_t c) -> std::optional<size_t> {
    if (max_props) {
      if (c + 1 > *max_props) return std::nullopt;
      return c + 1;
    }
    return std::min(c + 1, cap);
  };
  // last_choice[i]: the last j >= i reachable by skipping optional properties (the first
  // required one, or n - 1); all_optional[i]: every property from i on is optional.
  std::vector<size_t> last_choice(n + 1, n);
  std::vector<char> all_optional(n + 1, 1);
  for (size_t i = n; i-- > 0;) {
    last_choice[i] = named[i].required ? i : (i + 1 < n ? last_choice[i + 1] : i);
    all_optional[i] = !named[i].required && all_optional[i + 1];
  }
  std::vector<char> live((n + 1) * (cap + 1), 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t i = n + 1; i-- > 0;) {
      for (size_t c = cap + 1; c-- > 0;) {
        if (live[idx(i, c)]) continue;
        bool l = all_optional[i] && c >= min_props;
        auto nc = next_count(c);
        if (nc) {
          for (size_t j = i; j < n && j <= last_choice[i] && !l; ++j) l = live[idx(j + 1, *nc)];
          if (extra && live[idx(i, *nc)]) l = true;
        }
        if (l) {
          live[idx(i, c)] = 1;
          changed = true;
        }
      }
    }
  }
  if (!live[idx(0, 0)]) return std::nullopt;
  const std::string w = ws();
  std::map<size_t, std::string> state_names;
  std::vector<std::pair<size_t, size_t>> todo;
  auto state_ref = [&](size_t i, size_t c) {
    auto [it, inserted] = state_names.emplace(idx(i, c), "");
    if (inserted) {
      it->second = reserve_name(path + "-o" + std::to_string(i) + "c" + std::to_string(c));
      todo.emplace_back(i, c);
    }
    return it->second;
  };
  const std::string start = state_ref(0, 0);
  for (size_t t = 0; t < todo.size(); ++t) {
    const auto [i, c] = todo[t];
    std::vector<std::string> alts;
    const std::string lead = c == 0 ? "" : sep();
    auto nc = next_count(c);
    if (nc) {
      for (size_t j = i; j < n && j <= last_choice[i]; ++j) {
        if (live[idx(j + 1, *nc)]) alts.push_back(named[j].member + " " + state_ref(j + 1, *nc));
      }
      if (extra && live[idx(i, *nc)]) alts.push_back(*extra + " " + state_ref(i, *nc));
    }
    define(state_names[idx(i, c)], state_body(lead, alts, all_optional[i] && c >= min_props));
  }
  return "\"{\" " + w + start + " " + w + "\"}\"";
}

}  // namespace agentrt::grammars
