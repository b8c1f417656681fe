#include "grammars/json_schema_compiler.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <tuple>

#include "grammars/schema_formats.h"
#include "grammars/schema_merge.h"
#include "grammars/schema_numbers.h"
#include "grammars/schema_pattern.h"
#include "grammars/schema_validate.h"

namespace agentrt::grammars {
namespace {

constexpr int kMaxDepth = 200;
constexpr size_t kInlineLimit = 80;  // longer expressions get a rule of their own

const std::vector<std::string>& all_types() {
  static const std::vector<std::string> t = {"null",  "boolean", "object",
                                             "array", "string",  "number"};
  return t;
}

// Vocabulary keywords we do not implement: a schema using them does not compile.
bool is_unsupported_keyword(const std::string& k, const SchemaJson& schema) {
  if (k == "if") return schema.contains("then") || schema.contains("else");
  return k == "$dynamicRef" || k == "$recursiveRef" || k == "unevaluatedProperties" ||
         k == "unevaluatedItems" || k == "minContains" || k == "maxContains";
}

bool is_trivial(const SchemaJson& s) {
  if (s.is_boolean()) return s.get<bool>();
  if (!s.is_object()) return false;
  for (const auto& [k, v] : s.items()) {
    if (is_vocabulary_keyword(k) && !is_annotation_keyword(k)) return false;
  }
  return true;
}

bool has_constraints(const SchemaJson& s, const char* except) {
  for (const auto& [k, v] : s.items()) {
    if (k != except && is_vocabulary_keyword(k) && !is_annotation_keyword(k)) return true;
  }
  return false;
}

// Whether normalise() changes `s` (dependencies, allOf, $ref beside other keywords).
bool needs_rewrite(const SchemaJson& s) {
  return s.contains("allOf") || s.contains("dependencies") || s.contains("dependentRequired") ||
         s.contains("dependentSchemas") || (s.contains("$ref") && has_constraints(s, "$ref"));
}

std::string join_alternatives(const std::vector<std::string>& alts) {
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

std::vector<std::string> types_of(const SchemaJson& schema, const std::string& path) {
  auto it = schema.find("type");
  if (it == schema.end()) return all_types();
  std::vector<std::string> out;
  auto add = [&](const SchemaJson& t) {
    if (!t.is_string())
      throw GrammarError(display_path(path) + ": 'type' must be a string or array of strings");
    std::string name = t.get<std::string>();
    static const std::set<std::string> known = {"null",   "boolean", "object", "array",
                                                "string", "number",  "integer"};
    if (!known.count(name))
      throw GrammarError(display_path(path) + ": unknown type '" + name + "'");
    out.push_back(name);
  };
  if (it->is_array()) {
    for (const auto& t : *it) add(t);
  } else {
    add(*it);
  }
  // "number" already covers "integer".
  if (std::find(out.begin(), out.end(), "number") != out.end()) {
    out.erase(std::remove(out.begin(), out.end(), "integer"), out.end());
  }
  return out;
}

std::set<std::string> type_names(const SchemaJson& s) {
  std::set<std::string> out;
  auto it = s.find("type");
  if (it == s.end()) return {"null", "boolean", "object", "array", "string", "number", "integer"};
  auto add = [&](const SchemaJson& t) {
    if (!t.is_string()) return;
    out.insert(t.get<std::string>());
    if (t == "number") out.insert("integer");
  };
  if (it->is_array()) {
    for (const auto& t : *it) add(t);
  } else {
    add(*it);
  }
  return out;
}

// The values listed by enum/const, or nullopt when the schema lists none.
std::optional<std::vector<SchemaJson>> listed_values(const SchemaJson& s) {
  if (!s.is_object()) return std::nullopt;
  if (s.contains("const")) return std::vector<SchemaJson>{s["const"]};
  if (s.contains("enum") && s["enum"].is_array())
    return std::vector<SchemaJson>(s["enum"].begin(), s["enum"].end());
  return std::nullopt;
}

bool value_has_type(const SchemaJson& v, const std::set<std::string>& types) {
  if (v.is_null()) return types.count("null");
  if (v.is_boolean()) return types.count("boolean");
  if (v.is_object()) return types.count("object");
  if (v.is_array()) return types.count("array");
  if (v.is_string()) return types.count("string");
  if (v.is_number_integer() ||
      (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()))) {
    return types.count("integer") || types.count("number");
  }
  return types.count("number");
}

bool values_disjoint(const std::vector<SchemaJson>& a, const std::vector<SchemaJson>& b) {
  for (const auto& x : a) {
    for (const auto& y : b) {
      if (json_equal(x, y)) return false;
    }
  }
  return true;
}

bool required_in(const SchemaJson& s, const std::string& key) {
  if (!s.contains("required") || !s["required"].is_array()) return false;
  for (const auto& r : s["required"]) {
    if (r == key) return true;
  }
  return false;
}

// Drafts 3 to 7 ignore the keywords beside a $ref; validators follow the draft that $schema
// names (MaskBench's instances were labelled so), 2019-09 on apply both.
bool declares_draft_before_2019(const SchemaJson& root) {
  if (!root.is_object() || !root.contains("$schema") || !root["$schema"].is_string()) return false;
  const std::string uri = root["$schema"].get<std::string>();
  for (const char* draft : {"draft-03", "draft-04", "draft-06", "draft-07"}) {
    if (uri.find(draft) != std::string::npos) return true;
  }
  return false;
}

// True when `a` requires a property name that `b` forbids (additionalProperties false without
// it in properties or patternProperties, or its property schema false), and the two share no
// type but objects: then no instance satisfies both.
bool requires_what_other_forbids(const SchemaJson& a, const SchemaJson& b,
                                 const std::set<std::string>& common_types) {
  if (common_types.size() != 1 || !common_types.count("object")) return false;
  if (!a.contains("required") || !a["required"].is_array()) return false;
  const SchemaJson no_props = SchemaJson::object();
  const SchemaJson& props =
      b.contains("properties") && b["properties"].is_object() ? b["properties"] : no_props;
  const bool closed = b.contains("additionalProperties") && b["additionalProperties"] == false &&
                      !b.contains("patternProperties");
  for (const auto& r : a["required"]) {
    if (!r.is_string()) continue;
    const std::string key = r.get<std::string>();
    if (props.contains(key) ? props[key] == false : closed) return true;
  }
  return false;
}

// A schema without a type whose keywords apply to objects only: every non-object satisfies it.
bool constrains_only_objects(const SchemaJson& s) {
  if (!s.is_object() || s.contains("type")) return false;
  static const std::set<std::string> object_keywords = {
      "properties",        "required",      "additionalProperties",
      "patternProperties", "propertyNames", "minProperties",
      "maxProperties",     "dependencies",  "dependentRequired"};
  bool any = false;
  for (const auto& [k, v] : s.items()) {
    if (is_vocabulary_keyword(k) && !is_annotation_keyword(k)) {
      if (!object_keywords.count(k)) return false;
      any = true;
    }
  }
  return any;
}

// The values a property schema allows when it lists them (enum, const) or is a string whose
// pattern is one literal (jsend's "status": {"pattern": "^success$"}); nullopt otherwise.
std::optional<std::vector<SchemaJson>> discriminator_values(const SchemaJson& s) {
  if (auto v = listed_values(s)) return v;
  if (!s.is_object() || !s.contains("pattern") || !s["pattern"].is_string()) return std::nullopt;
  if (!s.contains("type") || s["type"] != "string") return std::nullopt;
  const std::string p = s["pattern"].get<std::string>();
  if (p.size() < 2 || p.front() != '^' || p.back() != '$') return std::nullopt;
  const std::string literal = p.substr(1, p.size() - 2);
  for (char c : literal) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != ' ') {
      return std::nullopt;
    }
  }
  return std::vector<SchemaJson>{SchemaJson(literal)};
}

// True when no instance can satisfy both schemas (a cheap, incomplete check used for oneOf).
bool provably_disjoint(const SchemaJson& a, const SchemaJson& b) {
  if (!a.is_object() || !b.is_object()) return a == SchemaJson(false) || b == SchemaJson(false);
  const auto ta = type_names(a), tb = type_names(b);
  bool common = false;
  for (const auto& t : ta) common = common || tb.count(t);
  if (!common) return true;
  std::set<std::string> common_types;
  for (const auto& t : ta) {
    if (tb.count(t)) common_types.insert(t);
  }
  if (requires_what_other_forbids(a, b, common_types) ||
      requires_what_other_forbids(b, a, common_types)) {
    return true;
  }
  auto va = listed_values(a), vb = listed_values(b);
  if (va && vb && values_disjoint(*va, *vb)) return true;
  if (va && std::none_of(va->begin(), va->end(),
                         [&](const SchemaJson& v) { return value_has_type(v, tb); }))
    return true;
  if (vb && std::none_of(vb->begin(), vb->end(),
                         [&](const SchemaJson& v) { return value_has_type(v, ta); }))
    return true;
  // Objects told apart by a required property with disjoint listed values (a discriminator).
  if (a.contains("properties") && b.contains("properties") && a["properties"].is_object() &&
      b["properties"].is_object() && !ta.count("null") && ta.size() == 1 && ta.count("object")) {
    for (const auto& [key, pa] : a["properties"].items()) {
      if (!b["properties"].contains(key) || !required_in(a, key) || !required_in(b, key)) continue;
      auto xa = discriminator_values(pa), xb = discriminator_values(b["properties"][key]);
      if (xa && xb && values_disjoint(*xa, *xb)) return true;
    }
  }
  return false;
}

// For a one-keyword bound schema, the type it applies to and the bound that negates it:
// not {minimum: x} holds for numbers below x, not {minLength: n} for strings shorter than n.
std::optional<std::pair<std::string, SchemaJson>> flipped_bound(const SchemaJson& n) {
  if (!n.is_object() || n.size() != 1) return std::nullopt;
  // The object's own iterator: items() hands out proxies whose keys die with the statement.
  const auto first = n.begin();
  const std::string& key = first.key();
  const SchemaJson& v = first.value();
  if (!v.is_number()) return std::nullopt;
  if (key == "minimum") return std::make_pair("number", SchemaJson{{"exclusiveMaximum", v}});
  if (key == "maximum") return std::make_pair("number", SchemaJson{{"exclusiveMinimum", v}});
  if (key == "exclusiveMinimum") return std::make_pair("number", SchemaJson{{"maximum", v}});
  if (key == "exclusiveMaximum") return std::make_pair("number", SchemaJson{{"minimum", v}});
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    return std::nullopt;
  const int64_t k = v.get<int64_t>();
  static const std::map<std::string, std::tuple<std::string, std::string, bool>> counts = {
      {"minLength", {"string", "maxLength", false}},
      {"maxLength", {"string", "minLength", true}},
      {"minItems", {"array", "maxItems", false}},
      {"maxItems", {"array", "minItems", true}},
      {"minProperties", {"object", "maxProperties", false}},
      {"maxProperties", {"object", "minProperties", true}}};
  auto it = counts.find(key);
  if (it == counts.end()) return std::nullopt;
  const auto& [type, other, up] = it->second;
  if (!up && k == 0) return std::make_pair(type, SchemaJson(false));  // not {minLength: 0}: never
  return std::make_pair(type, SchemaJson{{other, up ? k + 1 : k - 1}});
}

// A schema whose instances all fail `b` (a subset of "not b" that compile() can express), used
// to make oneOf branches exclusive; nullopt when none is at hand.
std::optional<SchemaJson> negation_subset(const SchemaJson& b, const SchemaJson& mine) {
  if (b.is_boolean()) return SchemaJson(!b.get<bool>());
  if (!b.is_object()) return std::nullopt;
  if (is_trivial(b)) return SchemaJson(false);
  std::vector<std::string> keys;
  for (const auto& [k, v] : b.items()) {
    if (is_vocabulary_keyword(k) && !is_annotation_keyword(k)) keys.push_back(k);
  }
  static const std::set<std::string> negatable = {"type",
                                                  "enum",
                                                  "const",
                                                  "required",
                                                  "minimum",
                                                  "maximum",
                                                  "exclusiveMinimum",
                                                  "exclusiveMaximum",
                                                  "minLength",
                                                  "maxLength",
                                                  "minItems",
                                                  "maxItems",
                                                  "minProperties",
                                                  "maxProperties"};
  if (keys.size() == 1 && negatable.count(keys[0]))
    return SchemaJson{{"not", SchemaJson{{keys[0], b[keys[0]]}}}};
  // Objects lacking a name that b requires fail b.
  if (b.contains("required") && b["required"].is_array() && !b["required"].empty()) {
    // Only a part of "not b" (b asks more than these names): of no use to a branch that
    // requires them all, which it would leave empty.
    const bool mine_requires_all =
        std::all_of(b["required"].begin(), b["required"].end(), [&](const SchemaJson& r) {
          return r.is_string() && required_in(mine, r.get<std::string>());
        });
    if (mine_requires_all) return std::nullopt;
    return SchemaJson{{"type", "object"}, {"not", SchemaJson{{"required", b["required"]}}}};
  }
  if (b.contains("type")) return SchemaJson{{"not", SchemaJson{{"type", b["type"]}}}};
  if (b.contains("const")) return SchemaJson{{"not", SchemaJson{{"const", b["const"]}}}};
  if (b.contains("enum")) return SchemaJson{{"not", SchemaJson{{"enum", b["enum"]}}}};
  return std::nullopt;
}

}  // namespace

JsonSchemaCompiler::JsonSchemaCompiler(const SchemaJson& root, JsonSchemaOptions options,
                                       std::string rule_prefix)
    : root_(root),
      options_(options),
      prefix_(std::move(rule_prefix)),
      refs_(root),
      ref_hides_siblings_(declares_draft_before_2019(root)) {
  names_.insert("root");
  if (options_.whitespace == JsonSchemaOptions::Whitespace::flexible) generic("ws");
}

std::string JsonSchemaCompiler::rules_text(std::string_view first_line) const {
  // Sized once: a megabyte of rules grown by doubling is copied and paged in several times.
  size_t size = first_line.size();
  for (const auto& [name, body] : rules_) size += name.size() + body.size() + 6;
  std::string out;
  out.reserve(size);
  out += first_line;
  for (const auto& [name, body] : rules_) {
    out += name;
    out += " ::= ";
    out += body;
    out += '\n';
  }
  return out;
}

std::string JsonSchemaCompiler::reserve_name(const std::string& hint) {
  // The hint's last words (the most specific part of a schema path), alphanumerics with single
  // dashes between runs: about 20 characters, finishing the word reached (at most 32). Short
  // names matter: references were most of a large schema's EBNF text (Kubernetes kb_240: 450 KB
  // of 860 KB were 46-character names starting "definitions-https-kubernetesjsonschema-de").
  constexpr size_t kHint = 20, kMaxHint = 32;
  auto alnum = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  };
  std::string tail;  // reversed
  for (size_t i = hint.size(); i-- > 0;) {
    const char c = hint[i];
    if (alnum(c)) {
      if (tail.size() >= kMaxHint) break;
      tail += c;
    } else if (tail.size() >= kHint) {
      break;
    } else if (!tail.empty() && tail.back() != '-') {
      tail += '-';
    }
  }
  while (!tail.empty() && tail.back() == '-') tail.pop_back();
  if (tail.empty()) tail = "s";
  std::string base = prefix_ + std::string(tail.rbegin(), tail.rend());
  std::string name = base;
  // Many rules may share a base (the same property name in many definitions): number them from
  // where the last one stopped.
  int& next = next_suffix_[base];
  if (next < 2) next = 2;
  while (names_.count(name)) name = base + "-" + std::to_string(next++);
  names_.insert(name);
  return name;
}

void JsonSchemaCompiler::define(const std::string& name, const std::string& body) {
  rules_.emplace_back(name, body);
}

std::string JsonSchemaCompiler::new_rule(const std::string& hint, const std::string& body) {
  std::string name = reserve_name(hint);
  define(name, body);
  return name;
}

std::string JsonSchemaCompiler::ws() const {
  return options_.whitespace == JsonSchemaOptions::Whitespace::flexible ? prefix_ + "json-ws " : "";
}

std::string JsonSchemaCompiler::sep() const { return ws() + "\",\" " + ws(); }

std::string JsonSchemaCompiler::kv(const std::string& key_expr,
                                   const std::string& value_expr) const {
  return key_expr + " " + ws() + "\":\" " + ws() + value_expr;
}

std::string JsonSchemaCompiler::generic(const std::string& which) {
  const std::string name = prefix_ + "json-" + which;
  if (generics_.insert(which).second) {
    names_.insert(name);
    const std::string w = ws();
    if (which == "value") {
      define(name, "(" + generic("object") + " | " + generic("array") + " | " + generic("string") +
                       " | " + generic("number") + " | \"true\" | \"false\" | \"null\")");
    } else if (which == "object") {
      const std::string member = generic("string") + " " + w + "\":\" " + w + generic("value");
      define(name, "\"{\" " + w + "(" + member + " (" + sep() + member + ")*)? " + w + "\"}\"");
    } else if (which == "array") {
      const std::string v = generic("value");
      define(name, "\"[\" " + w + "(" + v + " (" + sep() + v + ")*)? " + w + "\"]\"");
    } else if (which == "string") {
      define(name,
             "\"\\\"\" ([^\"\\\\\\x00-\\x1f] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}))* "
             "\"\\\"\"");
    } else if (which == "string-tail") {
      // Canonical escapes only, as json_string_tail_excluding's units.
      define(name, "(" + json_string_unit(CodepointSet::all()) + ")* \"\\\"\"");
    } else if (which == "string-other-tail") {
      define(name, json_string_other_tail());
    } else if (which == "number") {
      std::vector<std::pair<std::string, std::string>> none;
      define(name, *number_ebnf(NumberConstraints{}, prefix_, none));
    } else if (which == "ws") {
      define(name, "[ \\t\\n\\r]{0," + std::to_string(options_.max_whitespace) + "}");
    }
  }
  return name;
}

std::string JsonSchemaCompiler::value_literal(const SchemaJson& v) {
  if (v.is_number()) return number_literal_ebnf(v.dump());
  const std::string w = ws();
  if (!(v.is_object() || v.is_array()) || v.empty()) return ebnf_literal(v.dump());
  std::string out;
  if (v.is_object()) {
    out = "\"{\" " + w;
    bool first = true;
    for (const auto& [k, x] : v.items()) {
      if (!first) out += sep();
      first = false;
      out += kv(ebnf_literal(SchemaJson(k).dump()), value_literal(x)) + " ";
    }
    return out + w + "\"}\"";
  }
  out = "\"[\" " + w;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep() : "") + value_literal(v[i]) + " ";
  return out + w + "\"]\"";
}

std::string JsonSchemaCompiler::ref_rule(const std::string& ref, const std::string& path) {
  auto target = refs_.resolve(ref, path);
  auto it = ref_rules_.find(target.pointer);
  if (it != ref_rules_.end()) return it->second;
  std::string name = reserve_name(target.pointer.empty() ? "root-ref" : "ref" + target.pointer);
  ref_rules_[target.pointer] = name;
  auto body = compile(*target.schema, target.pointer);
  if (!body) {
    throw GrammarError(display_path(path) + ": $ref '" + ref +
                       "' points to a schema that no value satisfies");
  }
  define(name, *body);
  return name;
}

SchemaJson JsonSchemaCompiler::inline_refs(const SchemaJson& schema, const std::string& path) {
  SchemaJson s = schema;
  for (int hops = 0; s.is_object() && s.contains("$ref"); ++hops) {
    if (hops > 32) throw GrammarError(display_path(path) + ": $ref chain too long or cyclic");
    if (!s["$ref"].is_string())
      throw GrammarError(display_path(path) + ": '$ref' must be a string");
    SchemaJson target = *refs_.resolve(s["$ref"].get<std::string>(), path).schema;
    s.erase("$ref");
    s = has_constraints(s, "") && !ref_hides_siblings_ ? merge_schemas(target, s, path) : target;
  }
  return s;
}

SchemaJson JsonSchemaCompiler::normalise(const SchemaJson& schema, const std::string& path) {
  SchemaJson s = expand_dependencies(schema, path);
  // $ref with sibling keywords applies both (2020-12 semantics).
  if (s.contains("$ref") && has_constraints(s, "$ref")) {
    SchemaJson ref = SchemaJson{{"$ref", s["$ref"]}};
    s.erase("$ref");
    if (!s.contains("allOf")) s["allOf"] = SchemaJson::array();
    s["allOf"].push_back(ref);
  }
  // Members that repeat a combinator s already has (anyOf, oneOf, not) stay in allOf: compile()
  // distributes them after consuming the combinator of s.
  for (int round = 0; s.is_object() && s.contains("allOf"); ++round) {
    if (round > 64) throw GrammarError(display_path(path) + ": allOf nesting too deep");
    if (!s["allOf"].is_array())
      throw GrammarError(display_path(path) + ": 'allOf' must be an array");
    SchemaJson members = s["allOf"];
    s.erase("allOf");
    SchemaJson deferred = SchemaJson::array();
    for (size_t i = 0; i < members.size() && !s.is_boolean(); ++i) {
      const std::string mpath = path + "/allOf/" + std::to_string(i);
      SchemaJson m = inline_refs(expand_dependencies(members[i], mpath), mpath);
      if (m.is_object() && m.size() == 1 && s.contains(m.begin().key()) &&
          (m.contains("anyOf") || m.contains("oneOf") || m.contains("not"))) {
        deferred.push_back(m);
        continue;
      }
      s = merge_schemas(s, m, path);
    }
    if (!deferred.empty() && s.is_object()) {
      if (s.contains("allOf")) {
        for (const auto& d : deferred) s["allOf"].push_back(d);
      } else {
        s["allOf"] = deferred;
        break;
      }
    }
  }
  return s;
}

std::optional<std::string> JsonSchemaCompiler::compile(const SchemaJson& schema,
                                                       const std::string& path) {
  if (schema.is_boolean()) {
    if (!schema.get<bool>()) return std::nullopt;
    return generic("value");
  }
  if (!schema.is_object())
    throw GrammarError(display_path(path) + ": a schema must be an object or a boolean");
  if (ref_hides_siblings_ && schema.contains("$ref") && schema.size() > 1) {
    return compile(SchemaJson{{"$ref", schema["$ref"]}}, path);
  }
  if (++depth_ > kMaxDepth) throw GrammarError(display_path(path) + ": schema nesting too deep");
  struct DepthGuard {
    int& d;
    ~DepthGuard() { --d; }
  } guard{depth_};
  for (const auto& [k, v] : schema.items()) {
    if (is_unsupported_keyword(k, schema)) {
      throw GrammarError(display_path(path) + ": unsupported keyword '" + k + "'");
    }
  }
  if (schema.contains("$ref") && !has_constraints(schema, "$ref") &&
      !schema.contains("dependencies")) {
    if (!schema["$ref"].is_string())
      throw GrammarError(display_path(path) + ": '$ref' must be a string");
    return ref_rule(schema["$ref"].get<std::string>(), path);
  }
  // Most subschemas need no rewriting and are read in place: a copy per level made compiling
  // a deep schema quadratic in its size. `not` is rewritten below, so it takes the copy too.
  const bool rewrite = needs_rewrite(schema) || schema.contains("not");
  SchemaJson rewritten = rewrite ? normalise(schema, path) : SchemaJson();
  const SchemaJson& s = rewrite ? rewritten : schema;
  if (s.is_boolean()) return compile(s, path);
  for (const auto& [k, v] : s.items()) {
    if (is_unsupported_keyword(k, s)) {
      throw GrammarError(display_path(path) + ": unsupported keyword '" + k + "'");
    }
  }
  // anyOf / oneOf: one alternative per branch, each merged with the sibling keywords. A oneOf
  // branch excludes the others it may overlap with; where that cannot be expressed it is an
  // error, or anyOf with options_.approximate (docs/grammars.md).
  for (const char* key : {"anyOf", "oneOf"}) {
    if (!s.contains(key)) continue;
    if (!s[key].is_array() || s[key].empty()) {
      throw GrammarError(display_path(path) + ": '" + key + "' must be a non-empty array");
    }
    SchemaJson rest = s;
    rest.erase(key);
    std::vector<std::string> alts;
    const bool one_of = std::string(key) == "oneOf";
    // oneOf: each branch with references inlined and allOf merged, made once rather than once
    // per pair of branches (each a copy of a definition).
    std::vector<SchemaJson> resolved;
    for (size_t j = 0; one_of && j < s[key].size(); ++j) {
      const std::string bpath = path + "/" + key + "/" + std::to_string(j);
      resolved.push_back(inline_refs(s[key][j], bpath));
      try {
        resolved.back() = normalise(resolved.back(), bpath);
      } catch (const GrammarError&) {
      }
    }
    for (size_t i = 0; i < s[key].size(); ++i) {
      const std::string bpath = path + "/" + key + "/" + std::to_string(i);
      const SchemaJson& branch = s[key][i];
      std::optional<std::string> e;
      bool exclusive = false, parts_compiled = false;
      bool exact = !one_of;  // oneOf: this branch's alternative excludes the other branches
      if (one_of) {
        // oneOf: this branch and none of the others that could overlap with it, when those
        // negations are supported.
        SchemaJson mine = resolved[i];
        SchemaJson parts = SchemaJson::array({mine});
        bool negatable = true;
        for (size_t j = 0; j < s[key].size(); ++j) {
          if (j == i) continue;
          // allOf members merged: their required names and types become visible.
          const SchemaJson& other = resolved[j];
          // An other branch that only constrains objects accepts every non-object, which this
          // branch must then exclude: the rest of the comparison is between objects.
          if (constrains_only_objects(other) && type_names(mine).size() > 1) {
            const SchemaJson objects = {{"type", "object"}};
            try {
              mine = merge_schemas(mine, objects, bpath);
            } catch (const GrammarError&) {
              negatable = false;
              break;
            }
            parts.push_back(objects);
          }
          if (provably_disjoint(mine, other)) continue;
          auto neg = negation_subset(other, mine);
          // "not the other's type" stands for "not the other" only when the type is all the
          // other asks; else, if this branch has no other type, it would leave nothing valid.
          if (neg && neg->size() == 1 && neg->contains("not") && (*neg)["not"].contains("type") &&
              has_constraints(other, "type")) {
            const auto mine_types = type_names(mine), other_types = type_names(other);
            if (std::all_of(mine_types.begin(), mine_types.end(),
                            [&](const std::string& t) { return other_types.count(t) > 0; })) {
              neg.reset();
            }
          }
          if (!neg) {
            negatable = false;
            break;
          }
          parts.push_back(*neg);
        }
        if (negatable && parts.size() == 1) {
          exclusive = false;  // disjoint from all others: the plain branch is exact
          exact = true;
        } else if (negatable && parts.size() <= 12) {
          SchemaJson combined = rest;
          if (!combined.contains("allOf")) combined["allOf"] = SchemaJson::array();
          for (const auto& p : parts) combined["allOf"].push_back(p);
          try {
            e = compile(combined, bpath);
            exclusive = parts_compiled = exact = true;
          } catch (const GrammarError&) {
            exclusive = false;  // a negation we cannot express
          }
        }
      }
      if (!exact && !options_.approximate) {
        throw GrammarError(display_path(bpath) +
                           ": oneOf branch may overlap another branch whose negation is not "
                           "supported (exclusivity cannot be enforced)");
      }
      if (exclusive && parts_compiled) {
        // compiled above, possibly to nothing
      } else if (is_trivial(rest)) {
        e = compile(branch, bpath);
      } else {
        e = compile(merge_schemas(rest, inline_refs(branch, bpath), bpath), bpath);
      }
      if (e && std::find(alts.begin(), alts.end(), *e) == alts.end()) alts.push_back(*e);
    }
    if (alts.empty()) return std::nullopt;
    std::string expr = join_alternatives(alts);
    if (expr.size() > kInlineLimit) return new_rule(path.empty() ? "root-alt" : path, expr);
    return expr;
  }
  if (s.contains("$ref")) return compile(s, path);
  // enum/const: the listed values that satisfy every other keyword (not included).
  if (s.contains("enum") || s.contains("const")) return compile_enum(s, path);
  std::vector<SchemaJson> excluded;
  // `not`: the decidable forms become restrictions of the remaining keywords.
  while (s.contains("not")) {
    SchemaJson n = inline_refs(s["not"], path + "/not");
    rewritten.erase("not");
    if (is_trivial(n)) return std::nullopt;
    if (n.is_boolean()) continue;  // not false
    if (n.size() == 1 && n.contains("type")) {
      auto drop = types_of(n, path + "/not");
      std::vector<std::string> keep;
      for (const auto& t : types_of(s, path)) {
        bool dropped =
            std::find(drop.begin(), drop.end(), t) != drop.end() ||
            (t == "integer" && std::find(drop.begin(), drop.end(), "number") != drop.end());
        if (t == "number" && !dropped &&
            std::find(drop.begin(), drop.end(), "integer") != drop.end()) {
          throw GrammarError(display_path(path) +
                             ": 'not' an integer among numbers is not supported");
        }
        if (!dropped) keep.push_back(t);
      }
      if (keep.empty()) return std::nullopt;
      rewritten["type"] = keep;
    } else if (n.size() == 1 && (n.contains("enum") || n.contains("const"))) {
      if (n.contains("const")) {
        excluded.push_back(n["const"]);
      } else {
        for (const auto& v : n["enum"]) excluded.push_back(v);
      }
    } else if (n.size() == 1 && n.contains("required") && n["required"].is_array() &&
               !n["required"].empty()) {
      // Not all of the names present: at least one of them absent.
      SchemaJson absent = SchemaJson::array();
      for (const auto& r : n["required"]) {
        absent.push_back(SchemaJson{{"properties", {{r.get<std::string>(), false}}}});
      }
      if (!s.contains("allOf")) rewritten["allOf"] = SchemaJson::array();
      rewritten["allOf"].push_back(absent.size() == 1 ? absent[0] : SchemaJson{{"anyOf", absent}});
      return compile(s, path);
    } else if (n.size() == 1 && flipped_bound(n)) {
      // not {minimum: x} = a non-number, or a number below x; likewise for the other bounds.
      auto [type, flipped] = *flipped_bound(n);
      SchemaJson others = SchemaJson::array();
      for (const char* t : {"null", "boolean", "object", "array", "string", "number"}) {
        if (t != type) others.push_back(t);
      }
      if (flipped.is_object()) flipped["type"] = type;
      if (!s.contains("allOf")) rewritten["allOf"] = SchemaJson::array();
      rewritten["allOf"].push_back(SchemaJson{{"anyOf", {SchemaJson{{"type", others}}, flipped}}});
      return compile(s, path);
    } else if (n.size() == 1 && n.contains("anyOf") && n["anyOf"].is_array()) {
      for (const auto& b : n["anyOf"]) {
        if (!s.contains("allOf")) rewritten["allOf"] = SchemaJson::array();
        rewritten["allOf"].push_back(SchemaJson{{"not", b}});
      }
      return compile(s, path);
    } else {
      throw GrammarError(display_path(path) +
                         "/not: unsupported form of 'not' (supported: type, enum, const, a single "
                         "required name, anyOf of those)");
    }
  }
  if (s.contains("allOf")) return compile(s, path);
  return compile_flat(s, path, excluded);
}

std::optional<std::string> JsonSchemaCompiler::compile_enum(const SchemaJson& s,
                                                            const std::string& path) {
  SchemaJson candidates = SchemaJson::array();
  if (s.contains("enum")) {
    if (!s["enum"].is_array()) throw GrammarError(display_path(path) + ": 'enum' must be an array");
    candidates = s["enum"];
  }
  if (s.contains("const")) {
    if (s.contains("enum")) {
      bool in = false;
      for (const auto& v : candidates) in = in || json_equal(v, s["const"]);
      if (!in) return std::nullopt;
    }
    candidates = SchemaJson::array({s["const"]});
  }
  SchemaJson rest = s;
  rest.erase("enum");
  rest.erase("const");
  std::vector<std::string> alts;
  for (const auto& v : candidates) {
    bool ok;
    try {
      ok = schema_accepts(rest, v);
    } catch (const std::invalid_argument& e) {
      throw GrammarError(
          display_path(path) +
          ": cannot check enum/const values against the sibling keywords: " + e.what());
    }
    if (!ok) continue;
    std::string lit = value_literal(v);
    if (std::find(alts.begin(), alts.end(), lit) == alts.end()) alts.push_back(lit);
  }
  if (alts.empty()) return std::nullopt;
  std::string expr = join_alternatives(alts);
  if (expr.size() > kInlineLimit)
    return new_rule(path.empty() ? "root-enum" : path + "-enum", expr);
  return expr;
}

std::optional<std::string> JsonSchemaCompiler::compile_flat(
    const SchemaJson& s, const std::string& path, const std::vector<SchemaJson>& excluded) {
  std::vector<std::string> alts;
  for (const auto& t : types_of(s, path)) {
    auto e = compile_type(t, s, path, excluded);
    if (e) alts.push_back(*e);
  }
  if (alts.empty()) return std::nullopt;
  return join_alternatives(alts);
}

std::optional<std::string> JsonSchemaCompiler::compile_type(
    const std::string& type, const SchemaJson& s, const std::string& path,
    const std::vector<SchemaJson>& excluded) {
  auto is_excluded = [&](const SchemaJson& v) {
    return std::any_of(excluded.begin(), excluded.end(),
                       [&](const SchemaJson& e) { return json_equal(e, v); });
  };
  if (type == "null") {
    return is_excluded(SchemaJson(nullptr)) ? std::nullopt : std::optional<std::string>("\"null\"");
  }
  if (type == "boolean") {
    std::vector<std::string> alts;
    if (!is_excluded(SchemaJson(true))) alts.push_back("\"true\"");
    if (!is_excluded(SchemaJson(false))) alts.push_back("\"false\"");
    if (alts.empty()) return std::nullopt;
    return join_alternatives(alts);
  }
  if (type == "string") return compile_string(s, path, excluded, StringEncoding::json);
  for (const auto& e : excluded) {
    if ((e.is_number() && (type == "number" || type == "integer")) ||
        (e.is_object() && type == "object") || (e.is_array() && type == "array")) {
      throw GrammarError(display_path(path) + ": 'not' excluding " + type +
                         " values is not supported");
    }
  }
  if (type == "number" || type == "integer") return compile_number(s, path, type == "integer");
  if (type == "object") return compile_object(s, path);
  return compile_array(s, path);
}

std::optional<std::string> JsonSchemaCompiler::compile_number(const SchemaJson& s,
                                                              const std::string& path,
                                                              bool integer) {
  NumberConstraints c;
  try {
    c = number_constraints(s, integer, display_path(path));
  } catch (const std::invalid_argument& e) {
    throw GrammarError(e.what());
  }
  if (!c.lower && !c.upper && !c.divisor && c.max_fraction_digits < 0 && !c.integer) {
    return generic("number");
  }
  std::vector<std::pair<std::string, std::string>> extra;
  std::optional<std::string> e;
  try {
    e = number_ebnf(c, reserve_name(path.empty() ? "root-num" : path + "-num"), extra);
  } catch (const std::invalid_argument& err) {
    throw GrammarError(display_path(path) + ": " + err.what());
  }
  for (auto& [name, body] : extra) {
    names_.insert(name);
    define(name, body);
  }
  if (e && e->size() > kInlineLimit)
    return new_rule(path.empty() ? "root-number" : path + "-number", *e);
  return e;
}

std::optional<size_t> schema_count(const SchemaJson& s, const char* key, const std::string& path) {
  auto it = s.find(key);
  if (it == s.end()) return std::nullopt;
  if (!it->is_number() || it->get<double>() < 0)
    throw GrammarError(display_path(path) + ": '" + key + "' must be a non-negative integer");
  return static_cast<size_t>(it->get<double>());
}

std::optional<std::string> JsonSchemaCompiler::compile_string(
    const SchemaJson& s, const std::string& path, const std::vector<SchemaJson>& excluded,
    StringEncoding encoding) {
  auto fail = [&](const std::string& what) -> std::optional<std::string> {
    throw GrammarError(display_path(path) + ": " + what);
  };
  const auto min_len = schema_count(s, "minLength", path);
  const auto max_len = schema_count(s, "maxLength", path);
  int64_t lo = int64_t(min_len.value_or(0));
  std::optional<int64_t> hi;
  if (max_len) hi = int64_t(*max_len);
  if (hi && *hi < lo) return std::nullopt;
  std::optional<std::string> pattern;
  if (s.contains("pattern")) {
    if (!s["pattern"].is_string()) fail("'pattern' must be a string");
    pattern = s["pattern"].get<std::string>();
  }
  if (s.contains("format") && s["format"].is_string()) {
    if (is_unsupported_format(s["format"].get<std::string>())) {
      fail("format '" + s["format"].get<std::string>() + "' is not supported");
    }
    if (auto re = format_regex(s["format"].get<std::string>())) {
      if (pattern) fail("'format' together with 'pattern' is not supported");
      pattern = *re;
    }
  }
  std::vector<std::string> excluded_strings;
  for (const auto& e : excluded) {
    if (e.is_string()) excluded_strings.push_back(e.get<std::string>());
  }
  const std::string quote = encoding == StringEncoding::json ? "\"\\\"\" " : "";
  const std::string end_quote = encoding == StringEncoding::json ? " \"\\\"\"" : "";
  auto wrap = [&](const std::string& content) { return quote + content + end_quote; };
  auto repeat = [](const std::string& unit, int64_t a, std::optional<int64_t> b) {
    if (!b)
      return "(" + unit + ")" + (a == 0 ? "*" : a == 1 ? "+" : "{" + std::to_string(a) + ",}");
    if (*b == 0) return std::string();
    if (a == *b) return "(" + unit + "){" + std::to_string(a) + "}";
    return "(" + unit + "){" + std::to_string(a) + "," + std::to_string(*b) + "}";
  };
  if (!excluded_strings.empty()) {
    if (pattern || min_len || max_len || encoding != StringEncoding::json) {
      fail("'not' with string values together with other string keywords is not supported");
    }
    return wrap(json_string_content_excluding(excluded_strings));
  }
  std::string content;
  try {
    if (pattern) {
      if (min_len || max_len) {
        auto cr = pattern_as_class_repeat(*pattern);
        if (!cr)
          fail(
              "'pattern' together with minLength/maxLength is only supported for a single repeated "
              "character class");
        int64_t a = std::max<int64_t>(lo, cr->min);
        std::optional<int64_t> b = hi;
        if (cr->max >= 0) b = b ? std::min<int64_t>(*b, cr->max) : cr->max;
        if (b && *b < a) return std::nullopt;
        std::string unit = json_string_unit(cr->chars, encoding);
        if (unit.empty()) return a == 0 ? std::optional<std::string>(wrap("")) : std::nullopt;
        content = repeat(unit, a, b);
      } else {
        content = pattern_to_json_content(*pattern, encoding);
      }
    } else if (min_len || max_len) {
      content = repeat(json_string_unit(CodepointSet::all(), encoding), lo, hi);
    } else if (encoding == StringEncoding::json) {
      return generic("string");
    } else {
      // Raw text without "</": '<' only when followed by neither '/' nor the end.
      content = "([^<] | \"<\"+ [^/<])*";
    }
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }
  std::string expr = content.empty() ? (quote.empty() ? "" : "\"\\\"\\\"\"") : wrap(content);
  if (expr.empty()) return expr;
  if (expr.size() > kInlineLimit)
    return new_rule(path.empty() ? "root-string" : path + "-string", expr);
  return expr;
}

std::optional<std::string> JsonSchemaCompiler::compile_raw_string(const SchemaJson& schema,
                                                                  const std::string& path) {
  SchemaJson s = schema;
  if (s.is_object() && s.contains("$ref") && !has_constraints(s, "$ref")) s = inline_refs(s, path);
  if (s.is_object()) s = normalise(s, path);
  if (!s.is_object() || s.contains("anyOf") || s.contains("oneOf") || s.contains("not"))
    return std::nullopt;
  auto types = types_of(s, path);
  if (!s.contains("type") || types.size() != 1 || types[0] != "string") return std::nullopt;
  if (s.contains("enum") || s.contains("const")) {
    SchemaJson candidates = s.contains("const") ? SchemaJson::array({s["const"]}) : s["enum"];
    SchemaJson rest = s;
    rest.erase("enum");
    rest.erase("const");
    std::vector<std::string> alts;
    for (const auto& v : candidates) {
      if (!v.is_string()) continue;
      bool ok;
      try {
        ok = schema_accepts(rest, v);
      } catch (const std::invalid_argument& e) {
        throw GrammarError(display_path(path) + ": " + e.what());
      }
      const std::string text = v.get<std::string>();
      if (!ok || text.empty() || text.find("</") != std::string::npos) continue;
      alts.push_back(ebnf_literal(text));
    }
    if (alts.empty()) return std::nullopt;
    return join_alternatives(alts);
  }
  return compile_string(s, path, {}, StringEncoding::raw);
}

}  // namespace agentrt::grammars
