// The tool-argument validator on schemas it cannot evaluate: std::invalid_argument naming the
// schema path, never another exception.
#include "tools/json_schema_validator.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

namespace agentrt::tools {
namespace {

std::string schema_error(const std::string& schema, const std::string& instance) {
  try {
    validate(nlohmann::json::parse(schema), nlohmann::json::parse(instance));
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// Found by fuzz_json_schema_validator: {"maxItems": {"const": 0}} with an array instance threw
// nlohmann's type_error ("type must be number, but is object") out of validate().
TEST(JsonSchemaValidator, NonNumericCountsAreSchemaErrorsWithThePath) {
  EXPECT_EQ(schema_error(R"({"maxItems": {"const": 0}, "minContains": 0})", "[]"),
            "#/maxItems: expected a non-negative integer, got an object");
  EXPECT_EQ(schema_error(R"({"properties": {"a": {"minLength": "3"}}})", R"({"a": "x"})"),
            "#/properties/a/minLength: expected a non-negative integer, got \"3\"");
  EXPECT_EQ(schema_error(R"({"minItems": -1})", "[]"),
            "#/minItems: expected a non-negative integer, got -1");
  EXPECT_EQ(schema_error(R"({"maxProperties": 1.5})", "{}"),
            "#/maxProperties: expected a non-negative integer, got 1.5");
  EXPECT_EQ(schema_error(R"({"contains": {}, "maxContains": null})", "[1]"),
            "#/maxContains: expected a non-negative integer, got null");
  EXPECT_EQ(schema_error(R"({"minimum": "0"})", "1"), "#/minimum: expected a number, got \"0\"");
  EXPECT_EQ(schema_error(R"({"uniqueItems": 1})", "[1, 1]"),
            "#/uniqueItems: expected a boolean, got 1");
  EXPECT_EQ(schema_error(R"({"$ref": 7})", "1"), "#/$ref: expected a string, got 7");
  // Integral doubles are counts in JSON Schema.
  EXPECT_EQ(schema_error(R"({"maxItems": 2.0})", "[1]"), "");
  EXPECT_EQ(validate(nlohmann::json::parse(R"({"maxItems": 1.0})"), nlohmann::json::parse("[1, 2]"))
                .at(0)
                .keyword,
            "maxItems");
}

// Deep-input probes (ASan): a const, enum or instance nested 50,000 deep overflowed the stack in
// equal() and in the dump() of the error message.
TEST(JsonSchemaValidator, DeepNestingIsAnErrorNotAStackOverflow) {
  const std::string deep = std::string(50'000, '[') + std::string(50'000, ']');
  EXPECT_EQ(schema_error(R"({"const": )" + deep + "}", "1"),
            "#: the schema is nested more than 128 levels deep");
  const auto errors =
      validate(nlohmann::json::parse(R"({"uniqueItems": true})"), nlohmann::json::parse(deep));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].keyword, "nesting");
  EXPECT_EQ(describe(errors), "arguments: nested more than 128 levels deep");
  const std::string ok = std::string(127, '[') + std::string(127, ']');
  EXPECT_TRUE(validate(nlohmann::json::parse(R"({"const": )" + ok + "}"), nlohmann::json::parse(ok))
                  .empty());
}

}  // namespace
}  // namespace agentrt::tools
