// Every BFCL function declaration goes through the registry's validator; ground-truth calls
// (possible_answer/) validate and mutated ones do not.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tools/json_schema_validator.h"
#include "tools/tool.h"

namespace agentrt::tools {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// BFCL's AST ground truth lists the acceptable values of each parameter (also inside nested
// dicts); the first one is a concrete call ("" means "may be omitted").
json first_option(const json& options);
json concrete(const json& value) {
  if (value.is_object()) {
    json out = json::object();
    for (const auto& [k, v] : value.items()) {
      if (v.is_array() && !v.empty() && !(v[0].is_string() && v[0].get<std::string>().empty()))
        out[k] = first_option(v);
    }
    return out;
  }
  if (value.is_array()) {
    json out = json::array();
    for (const auto& v : value) out.push_back(concrete(v));
    return out;
  }
  return value;
}
json first_option(const json& options) { return concrete(options[0]); }

TEST(Bfcl, GroundTruthValidatesAndMutationsDoNot) {
  const fs::path dir = fs::path(AGENTRT_SHARED_DATA) / "bfcl";
  if (!fs::exists(dir / "possible_answer")) GTEST_SKIP() << "BFCL data not found at " << dir;
  int valid = 0, checked = 0, mutants = 0, rejected = 0, declarations = 0;
  for (const auto& entry : fs::directory_iterator(dir / "possible_answer")) {
    std::ifstream questions(dir / entry.path().filename()), answers(entry.path());
    std::string qline, aline;
    while (std::getline(questions, qline) && std::getline(answers, aline)) {
      const json q = json::parse(qline), a = json::parse(aline);
      for (const auto& fn : q["function"]) {
        ToolSpec::from_openai(nlohmann::ordered_json::parse(fn.dump()));
        ++declarations;
      }
      for (const auto& call : a["ground_truth"]) {
        const std::string name = call.begin().key();
        const json* schema = nullptr;
        for (const auto& fn : q["function"]) {
          if (fn["name"] == name) schema = &fn["parameters"];
        }
        ASSERT_NE(schema, nullptr) << q["id"] << " " << name;
        const json args = concrete(call.begin().value());
        // Java and JavaScript ground truth passes every value as source text (variable names,
        // expressions), whatever the declared type: only the declarations are checked there.
        const std::string file = entry.path().filename().string();
        if (file.find("java") != std::string::npos) continue;
        ++checked;
        const auto errors = validate(*schema, args);
        if (errors.empty())
          ++valid;
        else
          std::printf("BFCL ground truth that does not match its own declaration: %s: %s\n",
                      q["id"].dump().c_str(), describe(errors).c_str());
        // Mutation: drop a required parameter, or give the first property a value of a wrong type.
        json mutated = args;
        if (schema->contains("required") && !(*schema)["required"].empty()) {
          mutated.erase((*schema)["required"][0].get<std::string>());
        } else if (!args.empty()) {
          mutated[args.begin().key()] = json::array({json::object({{"bogus", true}})});
        } else {
          continue;
        }
        ++mutants;
        if (!validate(*schema, mutated).empty()) ++rejected;
      }
    }
  }
  std::printf("BFCL: %d declarations; ground truth valid %d/%d; mutants rejected %d/%d\n",
              declarations, valid, checked, rejected, mutants);
  // A handful of BFCL entries contradict their own declarations (e.g. integers given as names).
  EXPECT_GE(valid, checked * 99 / 100);
  EXPECT_GT(checked, 1000);
  EXPECT_GE(rejected, mutants * 95 / 100);
}

TEST(Validator, Keywords) {
  const json schema = json::parse(R"({"$defs": {"pos": {"type": "integer", "exclusiveMinimum": 0}},
    "type": "object", "properties": {"n": {"$ref": "#/$defs/pos"}, "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "uniqueItems": true, "maxItems": 3},
    "kind": {"enum": ["a", "b"]}, "when": {"type": "string", "format": "date"}, "name": {"type": "string", "minLength": 2, "maxLength": 3},
    "x": {"oneOf": [{"type": "integer"}, {"type": "string"}]}, "m": {"type": "number", "multipleOf": 0.5}},
    "required": ["n"], "additionalProperties": false})");
  EXPECT_TRUE(
      validate(
          schema,
          json::parse(
              R"({"n": 3, "tags": ["a", "b"], "kind": "a", "when": "2024-02-29", "name": "éé", "x": 1, "m": 1.5})"))
          .empty());
  for (const char* bad :
       {R"({"n": 0})", R"({"n": 1, "tags": ["a", "a"]})", R"({"n": 1, "tags": ["A"]})",
        R"({"n": 1, "kind": "c"})", R"({"n": 1, "when": "2024-13-01"})",
        R"({"n": 1, "name": "abcd"})", R"({"n": 1, "extra": 1})", R"({})", R"({"n": 1, "x": 1.5})",
        R"({"n": 1, "m": 0.3})", R"({"n": 1, "tags": ["a","b","c","d"]})"}) {
    EXPECT_FALSE(validate(schema, json::parse(bad)).empty()) << bad;
  }
  EXPECT_THROW(validate(json::parse(R"({"$ref": "#/nope"})"), 1), std::invalid_argument);
  EXPECT_TRUE(
      validate(
          json::parse(
              R"({"type": "dict", "properties": {"f": {"type": "float"}, "t": {"type": "tuple"}, "a": {"type": "any"}}})"),
          json::parse(R"({"f": 2, "t": [1], "a": null})"))
          .empty());
}

}  // namespace
}  // namespace agentrt::tools
