#include "grammars/json_schema.h"

#include "grammars/json_schema_compiler.h"

namespace agentrt::grammars {

std::string json_schema_to_ebnf(const nlohmann::ordered_json& schema,
                                const JsonSchemaOptions& options) {
  JsonSchemaCompiler compiler(schema, options, "");
  auto root = compiler.compile(schema, "");
  if (!root) throw GrammarError("/: the schema is unsatisfiable (no JSON value satisfies it)");
  return compiler.rules_text("root ::= " + *root + "\n");
}

std::string json_schema_to_ebnf(const nlohmann::json& schema, const JsonSchemaOptions& options) {
  check_schema_nesting(schema);  // before dump(), which recurses
  return json_schema_to_ebnf(nlohmann::ordered_json::parse(schema.dump()), options);
}

Grammar grammar_from_json_schema(const nlohmann::ordered_json& schema,
                                 const JsonSchemaOptions& options) {
  return Grammar::from_ebnf(json_schema_to_ebnf(schema, options), "root");
}

Grammar grammar_from_json_schema(const nlohmann::json& schema, const JsonSchemaOptions& options) {
  return Grammar::from_ebnf(json_schema_to_ebnf(schema, options), "root");
}

}  // namespace agentrt::grammars
