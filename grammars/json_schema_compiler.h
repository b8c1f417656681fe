// The JSON Schema compiler behind json_schema.h: turns (sub)schemas into EBNF expressions and
// rules. Shared by json_schema_to_ebnf and the tool-call grammar builder, which compiles several
// schemas into one grammar (distinct rule prefixes) and needs raw-string parameter values.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "grammars/json_schema.h"
#include "grammars/schema_refs.h"
#include "grammars/schema_strings.h"

namespace agentrt::grammars {

class JsonSchemaCompiler {
 public:
  // `root` must outlive the compiler. Rule names start with `rule_prefix`.
  JsonSchemaCompiler(const SchemaJson& root, JsonSchemaOptions options, std::string rule_prefix);

  // EBNF expression for the JSON text of instances of `schema` (a subschema of the root, or the
  // root), or nullopt when no instance exists. Throws GrammarError naming `path`.
  std::optional<std::string> compile(const SchemaJson& schema, const std::string& path);

  // EBNF for a string-typed schema's value written raw (not JSON-escaped, no quotes), as a
  // DSML parameter value: never contains "</". nullopt when the schema is not string-only.
  std::optional<std::string> compile_raw_string(const SchemaJson& schema, const std::string& path);

  // All rules created so far, as "name ::= body" lines, after `first_line`.
  std::string rules_text(std::string_view first_line = "") const;

 private:
  std::optional<std::string> compile_flat(const SchemaJson& schema, const std::string& path,
                                          const std::vector<SchemaJson>& excluded);
  std::optional<std::string> compile_type(const std::string& type, const SchemaJson& schema,
                                          const std::string& path,
                                          const std::vector<SchemaJson>& excluded);
  std::optional<std::string> compile_string(const SchemaJson& schema, const std::string& path,
                                            const std::vector<SchemaJson>& excluded,
                                            StringEncoding encoding);
  std::optional<std::string> compile_number(const SchemaJson& schema, const std::string& path,
                                            bool integer);
  std::optional<std::string> compile_object(const SchemaJson& schema, const std::string& path);
  struct OrderFreeMember {
    std::string member;  // EBNF for "key":value
    bool required;
    bool tracked;  // at most once
  };
  std::optional<std::string> order_free_object(const std::vector<OrderFreeMember>& named,
                                               const std::optional<std::string>& extra,
                                               size_t min_props, std::optional<size_t> max_props,
                                               const std::string& path);
  std::optional<std::string> compile_array(const SchemaJson& schema, const std::string& path);
  // uniqueItems over items drawn from `values` (distinct): one state per set of values used.
  std::optional<std::string> unique_items_array(const std::vector<SchemaJson>& values,
                                                size_t min_items, std::optional<size_t> max_items,
                                                const std::string& path);
  std::optional<std::string> compile_enum(const SchemaJson& schema, const std::string& path);
  std::string ref_rule(const std::string& ref, const std::string& path);

  // Resolves a schema that is a pure $ref (following chains) for merging.
  SchemaJson inline_refs(const SchemaJson& schema, const std::string& path);
  // Rewrites allOf, $ref siblings, dependencies and anyOf/oneOf siblings; see the .cc file.
  SchemaJson normalise(const SchemaJson& schema, const std::string& path);

  std::string value_literal(const SchemaJson& value);  // a constant, whitespace-aware
  std::string generic(const std::string& which);       // j-value, j-string, ... (emitted on use)
  std::string new_rule(const std::string& hint, const std::string& body);
  std::string reserve_name(const std::string& hint);
  void define(const std::string& name, const std::string& body);
  std::string ws() const;   // "" in compact mode, else the whitespace rule followed by a space
  std::string sep() const;  // the element separator: ws "," ws
  std::string kv(const std::string& key_expr, const std::string& value_expr) const;

  const SchemaJson& root_;
  JsonSchemaOptions options_;
  std::string prefix_;
  SchemaRefResolver refs_;
  const bool ref_hides_siblings_;  // the root declares a draft before 2019-09
  std::vector<std::pair<std::string, std::string>> rules_;
  std::unordered_set<std::string> names_;
  std::unordered_map<std::string, int> next_suffix_;  // base name → next number to try
  std::map<std::string, std::string> ref_rules_;      // JSON pointer → rule name
  std::set<std::string> generics_;
  // Ways of leaving object-key tries (json_string_tail_excluding), body → rule.
  std::unordered_map<std::string, std::string> key_exits_;
  int depth_ = 0;
};

// "/" for the root, else the JSON pointer.
inline std::string display_path(const std::string& path) { return path.empty() ? "/" : path; }

// The count keyword `key` of schema s (minItems, maxLength, ...) where present; throws
// GrammarError at `path` unless it is a non-negative number.
std::optional<size_t> schema_count(const SchemaJson& s, const char* key, const std::string& path);

}  // namespace agentrt::grammars
