// JSON Schema → EBNF (GBNF dialect of grammar.h) for grammar-constrained decoding of JSON.
// Coverage and the documented approximations are in docs/json_schema.md.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "grammars/grammar.h"

namespace agentrt::grammars {

struct JsonSchemaOptions {
  enum class Whitespace { compact, flexible };
  // compact: the instance as json.dumps(separators=(",", ":")) writes it; flexible: up to
  // max_whitespace whitespace characters around each structural token.
  Whitespace whitespace = Whitespace::compact;
  int max_whitespace = 4;
  // true: properties appear in `properties` order. false (default): objects with at most 6
  // named properties take them in any order (each at most once), larger ones keep the order.
  bool strict_property_order = false;
  // additionalProperties when a schema does not say: true per JSON Schema; the tool-call
  // builder passes false so that models cannot invent parameters.
  bool allow_additional_by_default = true;
};

// Throws GrammarError naming the schema path, e.g. "/properties/a/items: unsupported keyword
// 'if'", for unsupported keywords and unsatisfiable schemas.
// Pass an ordered_json to keep the `properties` order of the schema text (nlohmann::json sorts
// object keys, so with it properties are expected in sorted order).
std::string json_schema_to_ebnf(const nlohmann::ordered_json& schema,
                                const JsonSchemaOptions& options = {});
std::string json_schema_to_ebnf(const nlohmann::json& schema, const JsonSchemaOptions& options = {});

Grammar grammar_from_json_schema(const nlohmann::ordered_json& schema,
                                 const JsonSchemaOptions& options = {});
Grammar grammar_from_json_schema(const nlohmann::json& schema, const JsonSchemaOptions& options = {});

}  // namespace agentrt::grammars
