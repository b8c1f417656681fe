#include "tools/json_schema_validator.h"

#include <re2/re2.h>

#include <cmath>
#include <set>
#include <stdexcept>
#include <utility>

#include "tools/json_nesting.h"

namespace agentrt::tools {

namespace {

using json = nlohmann::json;

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string type_of(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number_float())
    return std::floor(v.get<double>()) == v.get<double>() && std::isfinite(v.get<double>())
               ? "integer"
               : "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  return "object";
}

bool type_matches(const std::string& type, const json& v) {
  const std::string t = type_of(v);
  if (type == "dict" || type == "object") return t == "object";
  if (type == "float" || type == "number" || type == "double")
    return t == "number" || t == "integer";
  if (type == "tuple" || type == "array" || type == "list") return t == "array";
  if (type == "any") return true;
  if (type == "int" || type == "long") return t == "integer";
  if (type == "bool") return t == "boolean";
  if (type == "str" || type == "char" || type == "String") return t == "string";
  if (type == "Boolean") return t == "boolean";
  // BFCL's Java declarations: container types whose values are given as source text.
  if (type == "HashMap" || type == "ArrayList" || type == "Array" || type.empty()) return true;
  return t == type;
}

bool format_ok(const std::string& format, const std::string& s) {
  static const std::pair<const char*, const char*> kFormats[] = {
      {"date", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))"},
      {"time", R"(([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d))"},
      {"date-time",
       R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d))"},
      {"email", R"([^@\s]+@[^@\s]+\.[^@\s]+)"},
      {"uuid", R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"},
      {"ipv4", R"(((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))"},
      {"ipv6", R"([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)"},
      {"hostname",
       R"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)"},
      {"uri", R"([A-Za-z][A-Za-z0-9+.-]*:[^\s]*)"},
      {"uri-reference", R"([^\s]*)"},
      {"duration", R"(P(\d+W|(\d+Y)?(\d+M)?(\d+D)?(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?))"},
  };
  for (const auto& [name, pattern] : kFormats) {
    if (format == name) return RE2::FullMatch(s, RE2(pattern));
  }
  return true;  // unknown formats are annotations
}

// ECMAScript patterns are unanchored searches; RE2 syntax covers the subset used in practice.
bool pattern_matches(const std::string& pattern, const std::string& s, const std::string& where) {
  RE2 re(pattern, RE2::Quiet);
  if (!re.ok())
    throw std::invalid_argument(where + ": pattern '" + pattern +
                                "' is not supported: " + re.error());
  return RE2::PartialMatch(s, re);
}

// equal() and the dump() in error messages recurse over const, enum and instance values: deeper
// documents are refused before validation starts (tools/json_nesting.h).
constexpr size_t kMaxNesting = kMaxJsonNesting;

class Validator {
 public:
  explicit Validator(const json& root) : root_(root) {}

  void check(const json& schema, const json& v, const std::string& path, const std::string& spath,
             std::vector<ValidationError>& errors, int depth = 0) {
    if (depth > 64) throw std::invalid_argument(spath + ": schema recursion too deep");
    if (schema.is_boolean()) {
      if (!schema.get<bool>()) errors.push_back({path, "false", "no value is allowed here"});
      return;
    }
    if (!schema.is_object()) return;
    const auto err = [&](const std::string& kw, const std::string& msg) {
      errors.push_back({path, kw, msg});
    };
    if (schema.contains("$ref")) {
      if (!schema["$ref"].is_string())
        throw std::invalid_argument(spath + "/$ref: expected a string, got " +
                                    shown(schema["$ref"]));
      check(resolve(schema["$ref"].get<std::string>(), spath), v, path, spath + "/$ref", errors,
            depth + 1);
    }
    if (schema.contains("type")) {
      const json& t = schema["type"];
      bool ok = false;
      if (t.is_string())
        ok = type_matches(t.get<std::string>(), v);
      else if (t.is_array())
        for (const auto& one : t)
          ok = ok || (one.is_string() && type_matches(one.get<std::string>(), v));
      if (!ok) {
        err("type", "expected " + t.dump() + ", got " + type_of(v));
        return;
      }
    }
    if (schema.contains("enum") && schema["enum"].is_array()) {
      bool found = false;
      for (const auto& e : schema["enum"]) found = found || equal(e, v);
      if (!found) err("enum", "must be one of " + schema["enum"].dump());
    }
    if (schema.contains("const") && !equal(schema["const"], v))
      err("const", "must be " + schema["const"].dump());
    for (const char* kw : {"allOf", "anyOf", "oneOf"}) {
      if (!schema.contains(kw) || !schema[kw].is_array()) continue;
      int passing = 0;
      for (size_t i = 0; i < schema[kw].size(); ++i) {
        std::vector<ValidationError> sub;
        check(schema[kw][i], v, path, spath + "/" + kw + "/" + std::to_string(i), sub, depth + 1);
        if (sub.empty())
          ++passing;
        else if (std::string(kw) == "allOf")
          errors.insert(errors.end(), sub.begin(), sub.end());
      }
      if (std::string(kw) == "anyOf" && passing == 0)
        err("anyOf", "matches none of the alternatives");
      if (std::string(kw) == "oneOf" && passing != 1)
        err("oneOf", "must match exactly one alternative, matches " + std::to_string(passing));
    }
    if (schema.contains("not")) {
      std::vector<ValidationError> sub;
      check(schema["not"], v, path, spath + "/not", sub, depth + 1);
      if (sub.empty()) err("not", "must not match the 'not' schema");
    }
    if (v.is_string()) strings(schema, v.get<std::string>(), err, spath);
    if (v.is_number()) numbers(schema, v.get<double>(), err, spath);
    if (v.is_array()) arrays(schema, v, path, spath, errors, depth, err);
    if (v.is_object()) objects(schema, v, path, spath, errors, depth, err);
  }

 private:
  template <typename Err>
  void strings(const json& s, const std::string& v, Err err, const std::string& spath) {
    const size_t n = code_points(v);
    if (s.contains("minLength") && n < count(s, "minLength", spath))
      err("minLength", "shorter than " + s["minLength"].dump() + " characters");
    if (s.contains("maxLength") && n > count(s, "maxLength", spath))
      err("maxLength", "longer than " + s["maxLength"].dump() + " characters");
    if (s.contains("pattern") && s["pattern"].is_string() &&
        !pattern_matches(s["pattern"], v, spath + "/pattern")) {
      err("pattern", "does not match " + s["pattern"].dump());
    }
    if (s.contains("format") && s["format"].is_string() && !format_ok(s["format"], v))
      err("format", "is not a valid " + s["format"].get<std::string>());
  }

  template <typename Err>
  void numbers(const json& s, double v, Err err, const std::string& spath) {
    if (s.contains("minimum") && v < number(s, "minimum", spath))
      err("minimum", "less than " + s["minimum"].dump());
    if (s.contains("maximum") && v > number(s, "maximum", spath))
      err("maximum", "greater than " + s["maximum"].dump());
    if (s.contains("exclusiveMinimum") && s["exclusiveMinimum"].is_number() &&
        v <= s["exclusiveMinimum"].get<double>())
      err("exclusiveMinimum", "not greater than " + s["exclusiveMinimum"].dump());
    if (s.contains("exclusiveMaximum") && s["exclusiveMaximum"].is_number() &&
        v >= s["exclusiveMaximum"].get<double>())
      err("exclusiveMaximum", "not less than " + s["exclusiveMaximum"].dump());
    if (s.contains("multipleOf") && s["multipleOf"].is_number()) {
      const double m = s["multipleOf"].get<double>();
      const double q = v / m;
      if (m > 0 && std::fabs(q - std::round(q)) > 1e-9 * std::max(1.0, std::fabs(q)))
        err("multipleOf", "not a multiple of " + s["multipleOf"].dump());
    }
  }

  template <typename Err>
  void arrays(const json& s, const json& v, const std::string& path, const std::string& spath,
              std::vector<ValidationError>& errors, int depth, Err err) {
    if (s.contains("minItems") && v.size() < count(s, "minItems", spath))
      err("minItems", "fewer than " + s["minItems"].dump() + " items");
    if (s.contains("maxItems") && v.size() > count(s, "maxItems", spath))
      err("maxItems", "more than " + s["maxItems"].dump() + " items");
    size_t prefix = 0;
    if (s.contains("prefixItems") && s["prefixItems"].is_array()) {
      prefix = s["prefixItems"].size();
      for (size_t i = 0; i < v.size() && i < prefix; ++i)
        check(s["prefixItems"][i], v[i], path + "/" + std::to_string(i),
              spath + "/prefixItems/" + std::to_string(i), errors, depth + 1);
    }
    if (s.contains("items")) {
      if (s["items"].is_array()) {  // draft-04 tuple form
        for (size_t i = 0; i < v.size() && i < s["items"].size(); ++i)
          check(s["items"][i], v[i], path + "/" + std::to_string(i),
                spath + "/items/" + std::to_string(i), errors, depth + 1);
      } else {
        for (size_t i = prefix; i < v.size(); ++i)
          check(s["items"], v[i], path + "/" + std::to_string(i), spath + "/items", errors,
                depth + 1);
      }
    }
    if (s.contains("uniqueItems") && !s["uniqueItems"].is_boolean())
      throw std::invalid_argument(spath + "/uniqueItems: expected a boolean, got " +
                                  shown(s["uniqueItems"]));
    if (s.value("uniqueItems", false)) {
      for (size_t i = 0; i < v.size(); ++i)
        for (size_t j = i + 1; j < v.size(); ++j)
          if (equal(v[i], v[j])) {
            err("uniqueItems",
                "items " + std::to_string(i) + " and " + std::to_string(j) + " are equal");
            i = v.size();
            break;
          }
    }
    if (s.contains("contains")) {
      size_t hits = 0;
      for (const auto& item : v) {
        std::vector<ValidationError> sub;
        check(s["contains"], item, path, spath + "/contains", sub, depth + 1);
        hits += sub.empty();
      }
      const size_t min = s.contains("minContains") ? count(s, "minContains", spath) : 1;
      if (hits < min)
        err("contains", "fewer than " + std::to_string(min) + " items match 'contains'");
      if (s.contains("maxContains") && hits > count(s, "maxContains", spath))
        err("maxContains", "too many items match 'contains'");
    }
  }

  template <typename Err>
  void objects(const json& s, const json& v, const std::string& path, const std::string& spath,
               std::vector<ValidationError>& errors, int depth, Err err) {
    if (s.contains("required") && s["required"].is_array()) {
      for (const auto& r : s["required"]) {
        if (r.is_string() && !v.contains(r.get<std::string>()))
          errors.push_back(
              {path + "/" + r.get<std::string>(), "required", "required property missing"});
      }
    }
    if (s.contains("minProperties") && v.size() < count(s, "minProperties", spath))
      err("minProperties", "fewer than " + s["minProperties"].dump() + " properties");
    if (s.contains("maxProperties") && v.size() > count(s, "maxProperties", spath))
      err("maxProperties", "more than " + s["maxProperties"].dump() + " properties");
    for (const auto& [key, value] : v.items()) {
      const std::string child = path + "/" + key;
      bool matched = false;
      if (s.contains("properties") && s["properties"].is_object() &&
          s["properties"].contains(key)) {
        matched = true;
        check(s["properties"][key], value, child, spath + "/properties/" + key, errors, depth + 1);
      }
      if (s.contains("patternProperties") && s["patternProperties"].is_object()) {
        for (const auto& [pattern, sub] : s["patternProperties"].items()) {
          if (pattern_matches(pattern, key, spath + "/patternProperties")) {
            matched = true;
            check(sub, value, child, spath + "/patternProperties/" + pattern, errors, depth + 1);
          }
        }
      }
      if (!matched && s.contains("additionalProperties")) {
        const json& ap = s["additionalProperties"];
        if (ap.is_boolean() && !ap.get<bool>())
          errors.push_back({child, "additionalProperties", "unexpected property"});
        else
          check(ap, value, child, spath + "/additionalProperties", errors, depth + 1);
      }
      if (s.contains("propertyNames")) {
        std::vector<ValidationError> sub;
        check(s["propertyNames"], json(key), child, spath + "/propertyNames", sub, depth + 1);
        if (!sub.empty())
          errors.push_back({child, "propertyNames", "property name '" + key + "' is not allowed"});
      }
    }
  }

  // Keyword values read as numbers: anything else is a schema the validator cannot evaluate,
  // reported at its path (nlohmann's type_error would name neither).
  // A scalar as written; an array or object by its type (dump() of a deep one would recurse).
  static std::string shown(const json& n) {
    return n.is_structured() ? std::string("an ") + n.type_name() : n.dump();
  }
  static size_t count(const json& s, const char* kw, const std::string& spath) {
    const json& n = s[kw];
    if (n.is_number_unsigned()) return n.get<size_t>();
    if (n.is_number_integer() && n.get<int64_t>() >= 0)
      return static_cast<size_t>(n.get<int64_t>());
    // 2.0 is an integer in JSON Schema; past 2^53 a double is no exact count anyway.
    if (n.is_number_float() && n.get<double>() >= 0 && n.get<double>() <= 9007199254740992.0 &&
        std::floor(n.get<double>()) == n.get<double>())
      return static_cast<size_t>(n.get<double>());
    throw std::invalid_argument(spath + "/" + kw + ": expected a non-negative integer, got " +
                                shown(n));
  }
  static double number(const json& s, const char* kw, const std::string& spath) {
    const json& n = s[kw];
    if (!n.is_number())
      throw std::invalid_argument(spath + "/" + kw + ": expected a number, got " + shown(n));
    return n.get<double>();
  }

  static bool equal(const json& a, const json& b) {
    if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
    if (a.type() != b.type()) return false;
    if (a.is_array()) {
      if (a.size() != b.size()) return false;
      for (size_t i = 0; i < a.size(); ++i)
        if (!equal(a[i], b[i])) return false;
      return true;
    }
    if (a.is_object()) {
      if (a.size() != b.size()) return false;
      for (const auto& [k, x] : a.items())
        if (!b.contains(k) || !equal(x, b[k])) return false;
      return true;
    }
    return a == b;
  }

  const json& resolve(const std::string& ref, const std::string& spath) {
    if (ref == "#") return root_;
    if (ref.rfind("#/", 0) != 0)
      throw std::invalid_argument(spath + "/$ref: only local references are supported, not '" +
                                  ref + "'");
    try {
      std::string pointer = ref.substr(1);
      return root_.at(json::json_pointer(pointer));
    } catch (const json::exception&) {
      throw std::invalid_argument(spath + "/$ref: '" + ref + "' does not resolve");
    }
  }

  const json& root_;
};

}  // namespace

std::vector<ValidationError> validate(const nlohmann::json& schema,
                                      const nlohmann::json& instance) {
  const std::string too_deep = "nested more than " + std::to_string(kMaxNesting) + " levels deep";
  if (nests_deeper_than(schema, kMaxNesting))
    throw std::invalid_argument("#: the schema is " + too_deep);
  std::vector<ValidationError> errors;
  if (nests_deeper_than(instance, kMaxNesting)) {
    errors.push_back({"", "nesting", too_deep});
    return errors;
  }
  Validator(schema).check(schema, instance, "", "#", errors);
  return errors;
}

std::string describe(const std::vector<ValidationError>& errors) {
  std::string out;
  for (const auto& e : errors) {
    if (!out.empty()) out += "; ";
    out += "arguments" + (e.path.empty() ? std::string() : e.path) + ": " + e.message;
  }
  return out;
}

}  // namespace agentrt::tools
