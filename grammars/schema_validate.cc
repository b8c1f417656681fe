#include "grammars/schema_validate.h"

#include <cmath>
#include <set>
#include <stdexcept>

#include "grammars/schema_formats.h"
#include "grammars/schema_merge.h"
#include "grammars/schema_pattern.h"

namespace agentrt::grammars {
namespace {

bool has_type(const SchemaJson& v, const std::string& t) {
  if (t == "null") return v.is_null();
  if (t == "boolean") return v.is_boolean();
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") {
    if (v.is_number_integer()) return true;
    if (!v.is_number_float()) return false;
    double d = v.get<double>();
    return std::isfinite(d) && std::floor(d) == d;
  }
  throw std::invalid_argument("unknown type '" + t + "'");
}

bool pattern_ok(const std::string& pattern, const std::string& text) {
  return pattern_matches(parse_pattern(pattern), text);
}

size_t codepoint_count(const std::string& s) { return utf8_codepoints(s).size(); }

}  // namespace

bool json_equal(const SchemaJson& a, const SchemaJson& b) {
  if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
  if (a.type() != b.type()) return false;
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!json_equal(a[i], b[i])) return false;
    }
    return true;
  }
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (const auto& [k, v] : a.items()) {
      auto it = b.find(k);
      if (it == b.end() || !json_equal(v, *it)) return false;
    }
    return true;
  }
  return a == b;
}

namespace {

bool accepts(const SchemaJson& schema, const SchemaJson& v) {
  if (schema.is_boolean()) return schema.get<bool>();
  if (!schema.is_object()) throw std::invalid_argument("schema is not an object");
  for (const auto& [k, s] : schema.items()) {
    if (is_annotation_keyword(k) || !is_vocabulary_keyword(k)) continue;
    if (k == "type") {
      bool any = false;
      if (s.is_array()) {
        for (const auto& t : s) any = any || has_type(v, t.get<std::string>());
      } else {
        any = has_type(v, s.get<std::string>());
      }
      if (!any) return false;
    } else if (k == "enum") {
      bool found = false;
      for (const auto& e : s) found = found || json_equal(e, v);
      if (!found) return false;
    } else if (k == "const") {
      if (!json_equal(s, v)) return false;
    } else if (k == "minimum" || k == "maximum" || k == "exclusiveMinimum" ||
               k == "exclusiveMaximum" || k == "multipleOf") {
      if (!v.is_number() || s.is_boolean()) continue;
      const double x = v.get<double>(), b = s.get<double>();
      const bool excl_min = schema.value("exclusiveMinimum", SchemaJson(false)) == SchemaJson(true);
      const bool excl_max = schema.value("exclusiveMaximum", SchemaJson(false)) == SchemaJson(true);
      if (k == "minimum" && (excl_min ? x <= b : x < b)) return false;
      if (k == "maximum" && (excl_max ? x >= b : x > b)) return false;
      if (k == "exclusiveMinimum" && x <= b) return false;
      if (k == "exclusiveMaximum" && x >= b) return false;
      if (k == "multipleOf") {
        double q = x / b;
        if (std::fabs(q - std::round(q)) > 1e-9) return false;
      }
    } else if (k == "minLength" || k == "maxLength") {
      if (!v.is_string()) continue;
      size_t n = codepoint_count(v.get<std::string>());
      if (k == "minLength" ? n < s.get<size_t>() : n > s.get<size_t>()) return false;
    } else if (k == "pattern") {
      if (v.is_string() && !pattern_ok(s.get<std::string>(), v.get<std::string>())) return false;
    } else if (k == "format") {
      if (!v.is_string() || !s.is_string()) continue;
      auto re = format_regex(s.get<std::string>());
      if (re && !pattern_ok(*re, v.get<std::string>())) return false;
    } else if (k == "properties" || k == "patternProperties" || k == "additionalProperties") {
      if (!v.is_object()) continue;
      if (k != "additionalProperties") continue;  // checked together below
    } else if (k == "required") {
      if (!v.is_object()) continue;
      for (const auto& r : s) {
        if (!v.contains(r.get<std::string>())) return false;
      }
    } else if (k == "propertyNames") {
      if (!v.is_object()) continue;
      for (const auto& [pk, pv] : v.items()) {
        if (!accepts(s, SchemaJson(pk))) return false;
      }
    } else if (k == "minProperties" || k == "maxProperties") {
      if (!v.is_object()) continue;
      if (k == "minProperties" ? v.size() < s.get<size_t>() : v.size() > s.get<size_t>())
        return false;
    } else if (k == "items" || k == "prefixItems" || k == "additionalItems") {
      continue;  // checked together below
    } else if (k == "minItems" || k == "maxItems") {
      if (!v.is_array()) continue;
      if (k == "minItems" ? v.size() < s.get<size_t>() : v.size() > s.get<size_t>()) return false;
    } else if (k == "uniqueItems") {
      if (!v.is_array() || !s.get<bool>()) continue;
      for (size_t i = 0; i < v.size(); ++i) {
        for (size_t j = i + 1; j < v.size(); ++j) {
          if (json_equal(v[i], v[j])) return false;
        }
      }
    } else if (k == "contains") {
      if (!v.is_array()) continue;
      bool any = false;
      for (const auto& e : v) any = any || accepts(s, e);
      if (!any) return false;
    } else if (k == "allOf") {
      for (const auto& sub : s) {
        if (!accepts(sub, v)) return false;
      }
    } else if (k == "anyOf") {
      bool any = false;
      for (const auto& sub : s) any = any || accepts(sub, v);
      if (!any) return false;
    } else if (k == "oneOf") {
      int n = 0;
      for (const auto& sub : s) n += accepts(sub, v) ? 1 : 0;
      if (n != 1) return false;
    } else if (k == "not") {
      if (accepts(s, v)) return false;
    } else {
      throw std::invalid_argument("keyword '" + k + "' cannot be checked on a value");
    }
  }
  if (v.is_object()) {
    const SchemaJson props = schema.value("properties", SchemaJson::object());
    const SchemaJson patterns = schema.value("patternProperties", SchemaJson::object());
    for (const auto& [pk, pv] : v.items()) {
      bool matched = false;
      if (props.contains(pk)) {
        matched = true;
        if (!accepts(props[pk], pv)) return false;
      }
      for (const auto& [pat, ps] : patterns.items()) {
        if (pattern_ok(pat, pk)) {
          matched = true;
          if (!accepts(ps, pv)) return false;
        }
      }
      if (!matched && schema.contains("additionalProperties") &&
          !accepts(schema["additionalProperties"], pv)) {
        return false;
      }
    }
  }
  if (v.is_array()) {
    SchemaJson prefix = schema.value("prefixItems", SchemaJson::array());
    SchemaJson rest = schema.value("items", SchemaJson(true));
    if (rest.is_array()) {  // draft 4-2019 tuple form
      prefix = rest;
      rest = schema.value("additionalItems", SchemaJson(true));
    }
    for (size_t i = 0; i < v.size(); ++i) {
      const SchemaJson& item_schema = i < prefix.size() ? prefix[i] : rest;
      if (!accepts(item_schema, v[i])) return false;
    }
  }
  return true;
}

}  // namespace

bool schema_accepts(const SchemaJson& schema, const SchemaJson& value) {
  try {
    return accepts(schema, value);
  } catch (const SchemaJson::exception& e) {
    // A keyword of the wrong JSON type ("type": 5, "required": "a"): the schema is malformed.
    throw std::invalid_argument(std::string("malformed schema: ") + e.what());
  }
}

}  // namespace agentrt::grammars
