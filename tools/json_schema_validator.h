// JSON-Schema validation of tool arguments: the second lock behind the grammar (which
// guarantees shape for the native engine) and the only one for remote backends that did not
// constrain. Covers the keywords the grammar engine supports. BFCL's dialect is accepted with a
// documented mapping: "dict" -> object, "float" -> number, "tuple" -> array, "any" -> anything.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace agentrt::tools {

struct ValidationError {
  std::string path;     // JSON pointer into the instance, e.g. "/items/2/name"
  std::string keyword;  // the schema keyword that failed
  std::string message;
};

// Errors for `instance` under `schema` (empty: valid). Throws std::invalid_argument for a schema
// it cannot evaluate (bad $ref, invalid pattern), naming the schema path.
std::vector<ValidationError> validate(const nlohmann::json& schema, const nlohmann::json& instance);

// One line for the model: "arguments/city: required property missing; ..."
std::string describe(const std::vector<ValidationError>& errors);

}  // namespace agentrt::tools
