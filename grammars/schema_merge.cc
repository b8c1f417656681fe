#include "grammars/schema_merge.h"

#include <algorithm>
#include <numeric>
#include <set>

#include "grammars/grammar.h"

namespace agentrt::grammars {
namespace {

const std::set<std::string>& annotation_keywords() {
  static const std::set<std::string> k = {
      "$schema", "$id", "id", "$comment", "title", "description", "default", "examples",
      "deprecated", "readOnly", "writeOnly", "$anchor", "$dynamicAnchor", "$recursiveAnchor",
      "definitions", "$defs", "contentMediaType", "contentEncoding", "contentSchema",
      "$vocabulary"};
  return k;
}

std::set<std::string> type_set(const SchemaJson& t, const std::string& path) {
  std::set<std::string> out;
  auto add = [&](const SchemaJson& v) {
    if (!v.is_string()) throw GrammarError(path + ": 'type' must be a string or array of strings");
    out.insert(v.get<std::string>());
  };
  if (t.is_array()) {
    for (const auto& v : t) add(v);
  } else {
    add(t);
  }
  return out;
}

std::set<std::string> intersect_types(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::set<std::string> out;
  for (const auto& t : a) {
    if (b.count(t)) {
      out.insert(t);
    } else if (t == "integer" && b.count("number")) {
      out.insert("integer");
    } else if (t == "number" && b.count("integer")) {
      out.insert("integer");
    }
  }
  return out;
}

bool is_trivial(const SchemaJson& s) {
  if (s.is_boolean()) return s.get<bool>();
  if (!s.is_object()) return false;
  for (const auto& [k, v] : s.items()) {
    if (!is_annotation_keyword(k)) return false;
  }
  return true;
}

SchemaJson all_of(const SchemaJson& a, const SchemaJson& b) {
  if (is_trivial(a)) return b;
  if (is_trivial(b) || a == b) return a;
  return SchemaJson{{"allOf", SchemaJson::array({a, b})}};
}

void push_all_of(SchemaJson& out, const SchemaJson& s) {
  if (!out.contains("allOf")) out["allOf"] = SchemaJson::array();
  out["allOf"].push_back(s);
}

}  // namespace

bool is_annotation_keyword(const std::string& key) { return annotation_keywords().count(key) > 0; }

bool is_vocabulary_keyword(const std::string& key) {
  static const std::set<std::string> k = {
      "type", "enum", "const", "properties", "required", "additionalProperties",
      "patternProperties", "propertyNames", "minProperties", "maxProperties", "items",
      "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains",
      "minContains", "maxContains", "minLength", "maxLength", "pattern", "format", "minimum",
      "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "allOf", "anyOf", "oneOf",
      "not", "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef", "dependencies",
      "dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems"};
  return k.count(key) > 0 || is_annotation_keyword(key);
}

SchemaJson expand_dependencies(const SchemaJson& schema, const std::string& path) {
  if (!schema.is_object()) return schema;
  SchemaJson out = schema;
  auto absent = [](const std::string& key) {
    return SchemaJson{{"properties", SchemaJson{{key, false}}}};
  };
  auto expand = [&](const char* keyword) {
    auto it = schema.find(keyword);
    if (it == schema.end()) return;
    if (!it->is_object()) throw GrammarError(path + ": '" + keyword + "' must be an object");
    out.erase(keyword);
    for (const auto& [key, dep] : it->items()) {
      SchemaJson present;
      if (dep.is_array()) {
        SchemaJson req = SchemaJson::array({key});
        for (const auto& r : dep) req.push_back(r);
        present = SchemaJson{{"required", req}};
      } else {
        present = SchemaJson{{"allOf", SchemaJson::array({SchemaJson{{"required", {key}}}, dep})}};
      }
      // key absent, or key present and the dependency holds.
      push_all_of(out, SchemaJson{{"anyOf", SchemaJson::array({absent(key), present})}});
    }
  };
  expand("dependencies");
  expand("dependentRequired");
  expand("dependentSchemas");
  return out;
}

SchemaJson merge_schemas(const SchemaJson& a, const SchemaJson& b, const std::string& path) {
  if (a.is_boolean()) return a.get<bool>() ? b : a;
  if (b.is_boolean()) return b.get<bool>() ? a : b;
  if (!a.is_object() || !b.is_object()) throw GrammarError(path + ": a schema must be an object or a boolean");
  auto fail = [&](const std::string& what) {
    throw GrammarError((path.empty() ? "/" : path) + ": allOf: " + what);
  };
  SchemaJson out = a;
  // items applies after the same schema's prefixItems, so the two merge position by position.
  const bool a_prefix = a.contains("prefixItems"), b_prefix = b.contains("prefixItems");
  if ((a_prefix || b_prefix) && a != b &&
      (a.contains("items") || b.contains("items") || (a_prefix && b_prefix))) {
    const SchemaJson pa = a.value("prefixItems", SchemaJson::array());
    const SchemaJson pb = b.value("prefixItems", SchemaJson::array());
    const SchemaJson ia = a.value("items", SchemaJson(true)), ib = b.value("items", SchemaJson(true));
    if (!pa.is_array() || !pb.is_array() || ia.is_array() || ib.is_array()) {
      fail("prefixItems together with array-form items cannot be intersected");
    }
    SchemaJson prefix = SchemaJson::array();
    for (size_t i = 0; i < std::max(pa.size(), pb.size()); ++i) {
      prefix.push_back(all_of(i < pa.size() ? pa[i] : ia, i < pb.size() ? pb[i] : ib));
    }
    out["prefixItems"] = prefix;
    out["items"] = all_of(ia, ib);
  }
  for (const auto& [k, vb] : b.items()) {
    if ((k == "prefixItems" || k == "items") && out.contains("prefixItems") && (a_prefix || b_prefix)) continue;
    auto ia = a.find(k);
    if (ia == a.end()) {
      out[k] = vb;
      continue;
    }
    const SchemaJson& va = *ia;
    if (va == vb || is_annotation_keyword(k)) continue;
    if (k == "type") {
      auto t = intersect_types(type_set(va, path), type_set(vb, path));
      if (t.empty()) return SchemaJson(false);
      out[k] = SchemaJson(std::vector<std::string>(t.begin(), t.end()));
    } else if (k == "required") {
      std::vector<std::string> req = va.get<std::vector<std::string>>();
      for (const auto& r : vb) {
        if (std::find(req.begin(), req.end(), r.get<std::string>()) == req.end()) req.push_back(r);
      }
      out[k] = req;
    } else if (k == "properties" || k == "patternProperties" || k == "$defs" || k == "definitions") {
      for (const auto& [pk, ps] : vb.items()) {
        out[k][pk] = va.contains(pk) ? all_of(va[pk], ps) : ps;
      }
    } else if (k == "items" && va.is_object() == vb.is_object() && !va.is_array()) {
      out[k] = all_of(va, vb);
    } else if (k == "additionalProperties" || k == "propertyNames" || k == "contains" ||
               k == "additionalItems") {
      out[k] = all_of(va, vb);
    } else if (k == "enum") {
      SchemaJson both = SchemaJson::array();
      for (const auto& v : va) {
        if (std::find(vb.begin(), vb.end(), v) != vb.end()) both.push_back(v);
      }
      out[k] = both;
    } else if (k == "const") {
      return SchemaJson(false);  // two different constants
    } else if (k == "minimum" || k == "minLength" || k == "minItems" || k == "minProperties" ||
               (k == "exclusiveMinimum" && va.is_number() && vb.is_number())) {
      out[k] = va.get<double>() >= vb.get<double>() ? va : vb;
    } else if (k == "maximum" || k == "maxLength" || k == "maxItems" || k == "maxProperties" ||
               (k == "exclusiveMaximum" && va.is_number() && vb.is_number())) {
      out[k] = va.get<double>() <= vb.get<double>() ? va : vb;
    } else if (k == "uniqueItems") {
      out[k] = va.get<bool>() || vb.get<bool>();
    } else if (k == "multipleOf" && va.is_number_integer() && vb.is_number_integer()) {
      out[k] = std::lcm(va.get<int64_t>(), vb.get<int64_t>());
    } else if (k == "allOf") {
      for (const auto& s : vb) out[k].push_back(s);
    } else if (k == "anyOf" || k == "oneOf" || k == "not" || k == "$ref") {
      push_all_of(out, SchemaJson{{k, vb}});
    } else {
      fail("cannot intersect two different '" + k + "' keywords");
    }
  }
  // A property named on one side only is an additional property of the other side.
  auto constrain_extra = [&](const SchemaJson& side, const SchemaJson& other) {
    auto addl = side.find("additionalProperties");
    if (addl == side.end() || is_trivial(*addl)) return;
    if (side.contains("patternProperties") || other.contains("patternProperties")) {
      fail("additionalProperties together with patternProperties across allOf is not supported");
    }
    const SchemaJson own = side.value("properties", SchemaJson::object());
    const SchemaJson other_props = other.value("properties", SchemaJson::object());
    for (const auto& [pk, ps] : other_props.items()) {
      if (!own.contains(pk)) out["properties"][pk] = all_of(out["properties"][pk], *addl);
    }
    // Required names of the other side that are not properties of this side, too.
    const SchemaJson other_required = other.value("required", SchemaJson::array());
    for (const auto& r : other_required) {
      const std::string name = r.get<std::string>();
      if (!own.contains(name) && !out["properties"].contains(name)) out["properties"][name] = *addl;
    }
  };
  constrain_extra(a, b);
  constrain_extra(b, a);
  return out;
}

}  // namespace agentrt::grammars
