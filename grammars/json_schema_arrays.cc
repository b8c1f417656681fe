// Arrays: prefixItems (or the draft-4 tuple form of items), items / additionalItems for the
// rest, minItems / maxItems and contains. uniqueItems is exact when items have a few possible
// values (enum, const, boolean, null), else an error or, with options.approximate, not enforced
// (docs/grammars.md).
#include <bit>

#include "grammars/json_schema_compiler.h"
#include "grammars/schema_merge.h"
#include "grammars/schema_validate.h"

namespace agentrt::grammars {
namespace {

std::string repeat_suffix(size_t lo, std::optional<size_t> hi) {
  if (!hi) return lo == 0 ? "*" : lo == 1 ? "+" : "{" + std::to_string(lo) + ",}";
  if (lo == 0 && *hi == 1) return "?";
  if (lo == *hi) return "{" + std::to_string(lo) + "}";
  return "{" + std::to_string(lo) + "," + std::to_string(*hi) + "}";
}

// Sets of used values are grammar states: past this many the grammar would be too large.
constexpr size_t kMaxUniqueStates = 2048;

// The distinct values an item schema allows when it lists them (enum, const) or its types have
// few values (boolean, null); nullopt otherwise.
std::optional<std::vector<SchemaJson>> finite_item_values(const SchemaJson& item) {
  if (!item.is_object()) return std::nullopt;
  std::vector<SchemaJson> candidates;
  if (item.contains("const")) {
    candidates.push_back(item["const"]);
  } else if (item.contains("enum") && item["enum"].is_array()) {
    candidates.assign(item["enum"].begin(), item["enum"].end());
  } else if (item.contains("type")) {
    const SchemaJson& t = item["type"];
    for (const auto& name : t.is_array() ? t : SchemaJson::array({t})) {
      if (name == "boolean") {
        candidates.push_back(true);
        candidates.push_back(false);
      } else if (name == "null") {
        candidates.push_back(nullptr);
      } else {
        return std::nullopt;
      }
    }
  } else {
    return std::nullopt;
  }
  std::vector<SchemaJson> out;
  for (const auto& v : candidates) {
    try {
      if (!schema_accepts(item, v)) continue;
    } catch (const std::invalid_argument&) {
      return std::nullopt;  // a keyword the validator cannot check: not known to be finite
    }
    bool seen = false;
    for (const auto& o : out) seen = seen || json_equal(o, v);
    if (!seen) out.push_back(v);
  }
  return out;
}

}  // namespace

std::optional<std::string> JsonSchemaCompiler::unique_items_array(
    const std::vector<SchemaJson>& values, size_t min_items, std::optional<size_t> max_items,
    const std::string& path) {
  const size_t k = values.size();
  const size_t hi = std::min(max_items.value_or(k), k);
  if (min_items > hi) return std::nullopt;
  // States: the set of values written so far (a bitmask), at most `hi` of them.
  size_t states = 0;
  if (k < 63) {
    for (uint64_t set = 0; set < (uint64_t{1} << k) && states <= kMaxUniqueStates; ++set) {
      states += static_cast<size_t>(std::popcount(set)) <= hi ? 1 : 0;
    }
  }
  if (k >= 63 || states > kMaxUniqueStates) {
    throw GrammarError(display_path(path) + ": uniqueItems over " + std::to_string(k) +
                       " possible item values is too large to enforce");
  }
  std::vector<std::string> literals;
  for (const auto& v : values) literals.push_back(value_literal(v));
  std::map<uint64_t, std::string> names;
  std::vector<uint64_t> todo;
  auto state_ref = [&](uint64_t set) {
    auto [it, inserted] = names.emplace(set, "");
    if (inserted) {
      it->second = reserve_name(path + "-u" + std::to_string(set));
      todo.push_back(set);
    }
    return it->second;
  };
  const std::string start = state_ref(0);
  for (size_t t = 0; t < todo.size(); ++t) {
    const uint64_t set = todo[t];
    const size_t used = static_cast<size_t>(std::popcount(set));
    std::vector<std::string> alts;
    if (used < hi) {
      for (size_t j = 0; j < k; ++j) {
        if (set >> j & 1) continue;
        alts.push_back((used ? sep() : "") + literals[j] + " " + state_ref(set | uint64_t{1} << j));
      }
    }
    std::string body = "\"\"";
    if (!alts.empty()) {
      body = "(";
      for (size_t i = 0; i < alts.size(); ++i) body += (i ? " | " : "") + alts[i];
      body += ")";
      if (used >= min_items) body += "?";
    }
    define(names[set], body);
  }
  const std::string w = ws();
  return "\"[\" " + w + start + " " + w + "\"]\"";
}

std::optional<std::string> JsonSchemaCompiler::compile_array(const SchemaJson& s,
                                                             const std::string& path) {
  const std::string where = display_path(path);
  auto fail = [&](const std::string& what) -> std::optional<std::string> {
    throw GrammarError(where + ": " + what);
  };
  std::vector<SchemaJson> prefix;
  SchemaJson rest = true;
  std::string prefix_key = "prefixItems", rest_key = "items";
  if (s.contains("prefixItems")) {
    if (!s["prefixItems"].is_array()) fail("'prefixItems' must be an array");
    for (const auto& p : s["prefixItems"]) prefix.push_back(p);
    rest = s.value("items", SchemaJson(true));
  } else if (s.contains("items") && s["items"].is_array()) {
    prefix_key = "items";
    rest_key = "additionalItems";
    for (const auto& p : s["items"]) prefix.push_back(p);
    rest = s.value("additionalItems", SchemaJson(true));
  } else {
    rest = s.value("items", SchemaJson(true));
  }
  const size_t min_items = schema_count(s, "minItems", path).value_or(0);
  std::optional<size_t> max_items = schema_count(s, "maxItems", path);
  if (max_items && *max_items < min_items) return std::nullopt;

  std::vector<std::string> prefix_exprs;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (max_items && i >= *max_items) break;
    auto e = compile(prefix[i], path + "/" + prefix_key + "/" + std::to_string(i));
    if (!e) {  // no valid item here: the array ends before position i
      max_items = max_items ? std::min(*max_items, i) : i;
      break;
    }
    prefix_exprs.push_back(*e);
  }
  if (max_items && *max_items < min_items) return std::nullopt;
  // uniqueItems: nothing to enforce for at most one item; exact over a few item values.
  if (s.value("uniqueItems", SchemaJson(false)) == SchemaJson(true) &&
      !(max_items && *max_items <= 1)) {
    std::optional<std::vector<SchemaJson>> values;
    if (prefix.empty() && !s.contains("contains")) {
      values = finite_item_values(inline_refs(rest, path + "/" + rest_key));
    }
    if (values) return unique_items_array(*values, min_items, max_items, path);
    if (!options_.approximate) {
      fail(
          "uniqueItems is only enforced for items with a few possible values (enum, const, "
          "boolean, null) and no prefixItems or contains");
    }
  }
  std::optional<std::string> rest_expr;
  if (!max_items || *max_items > prefix_exprs.size())
    rest_expr = compile(rest, path + "/" + rest_key);
  const std::string w = ws();

  if (s.contains("contains")) {
    if (!prefix.empty() || min_items > 1 || max_items) {
      fail("'contains' together with prefixItems, minItems > 1 or maxItems is not supported");
    }
    if (!rest_expr) return std::nullopt;
    const std::string cpath = path + "/contains";
    auto c = compile(merge_schemas(rest, inline_refs(s["contains"], cpath), cpath), cpath);
    if (!c) return std::nullopt;
    return "\"[\" " + w + "(" + *rest_expr + " " + sep() + ")* " + *c + " (" + sep() + *rest_expr +
           ")* " + w + "\"]\"";
  }

  const size_t k = prefix_exprs.size();
  std::string body;
  // The items after the prefix.
  const size_t tail_min = min_items > k ? min_items - k : 0;
  std::optional<size_t> tail_max;
  if (max_items) tail_max = *max_items - k;
  if (!rest_expr) {
    if (tail_min > 0) return std::nullopt;
  } else if (!(tail_max && *tail_max == 0)) {
    const std::string item = *rest_expr;
    if (k == 0) {
      std::optional<size_t> more_max;
      if (tail_max) more_max = *tail_max - 1;
      std::string more =
          "(" + sep() + item + ")" + repeat_suffix(tail_min > 0 ? tail_min - 1 : 0, more_max);
      if (more_max && *more_max == 0) more.clear();
      body = item + (more.empty() ? "" : " " + more);
      if (tail_min == 0) body = "(" + body + ")?";
    } else {
      body = "(" + sep() + item + ")" + repeat_suffix(tail_min, tail_max);
    }
  }
  for (size_t i = k; i-- > 0;) {
    std::string elem = (i > 0 ? sep() : "") + prefix_exprs[i] + (body.empty() ? "" : " " + body);
    body = i >= min_items ? "(" + elem + ")?" : elem;
  }
  std::string expr = "\"[\" " + w + (body.empty() ? "" : body + " ") + w + "\"]\"";
  if (expr.size() > 80) return new_rule(path.empty() ? "root-array" : path + "-array", expr);
  return expr;
}

}  // namespace agentrt::grammars
