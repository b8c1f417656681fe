// JSON Schema → EBNF (GBNF dialect of grammar.h) for grammar-constrained decoding of JSON.
// Coverage and the documented approximations are in docs/grammars.md.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "grammars/grammar.h"

namespace agentrt::grammars {

struct JsonSchemaOptions {
  enum class Whitespace { compact, flexible };
  // compact: the instance as json.dumps(separators=(",", ":")) writes it; flexible: up to
  // max_whitespace whitespace characters around each structural token.
  Whitespace whitespace = Whitespace::compact;
  int max_whitespace = 4;
  // true: properties appear in `properties` order. false (default): objects with at most 6
  // named properties take them in any order, each at most once; larger ones take them in any
  // order when they have at most 9 required properties, no minProperties and the grammar stays
  // small (required ones at most once, optional ones possibly repeated), else in `properties`
  // order.
  bool strict_property_order = false;
  // additionalProperties when a schema does not say: true per JSON Schema; the tool-call
  // builder passes false so that models cannot invent parameters.
  bool allow_additional_by_default = true;
  // Keywords the grammar can only approximate: uniqueItems over items with more than a few
  // possible values, and oneOf whose branches may overlap but cannot be negated. false
  // (default): a compile error naming the schema path, so that a grammar never accepts an
  // instance the schema rejects. true: uniqueItems is not enforced and such oneOf is anyOf
  // (the tool-call builder: a slightly loose tool grammar beats none).
  bool approximate = false;
};

// Throws GrammarError naming the schema path, e.g. "/properties/a/items: unsupported keyword
// 'if'", for unsupported keywords and unsatisfiable schemas.
// Pass an ordered_json to keep the `properties` order of the schema text (nlohmann::json sorts
// object keys, so with it properties are expected in sorted order).
std::string json_schema_to_ebnf(const nlohmann::ordered_json& schema,
                                const JsonSchemaOptions& options = {});
std::string json_schema_to_ebnf(const nlohmann::json& schema,
                                const JsonSchemaOptions& options = {});

Grammar grammar_from_json_schema(const nlohmann::ordered_json& schema,
                                 const JsonSchemaOptions& options = {});
Grammar grammar_from_json_schema(const nlohmann::json& schema,
                                 const JsonSchemaOptions& options = {});

}  // namespace agentrt::grammars
