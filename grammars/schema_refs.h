// $ref resolution within one JSON Schema document: JSON pointers ("#/$defs/a"), anchors
// ("#name", $anchor) and embedded $id documents. Remote references are rejected.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace agentrt::grammars {

using SchemaJson = nlohmann::ordered_json;

class SchemaRefResolver {
 public:
  explicit SchemaRefResolver(const SchemaJson& root);

  struct Target {
    const SchemaJson* schema = nullptr;
    std::string pointer;  // canonical JSON pointer of the target within the root document
  };
  // Throws GrammarError naming `path` when the reference cannot be resolved.
  Target resolve(const std::string& ref, const std::string& path) const;

 private:
  void index(const SchemaJson& node, const std::string& pointer);
  void add_anchor(const std::string& name, const std::string& pointer);
  static constexpr const char* kAmbiguous = "<ambiguous>";
  const SchemaJson* at_pointer(const std::string& pointer) const;

  const SchemaJson& root_;
  std::map<std::string, std::string> ids_;      // $id / id → pointer
  std::map<std::string, std::string> anchors_;  // $anchor → pointer
};

// The compiler, the $ref index and nlohmann's dump() all recurse over a schema document: deeper
// documents are a GrammarError naming the path where the limit is passed.
constexpr size_t kMaxSchemaNesting = 512;
void check_schema_nesting(const nlohmann::ordered_json& schema);
void check_schema_nesting(const nlohmann::json& schema);

// "/a~1b/c" style escaping of one pointer token.
std::string pointer_token(const std::string& key);

}  // namespace agentrt::grammars
