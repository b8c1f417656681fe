// JSON Schema → grammar, one group per keyword family: each schema is compiled, run through the
// token matcher over a small synthetic vocabulary, and checked on accepted and rejected
// instances (compact serialisation unless a test says otherwise).
#include "grammars/json_schema.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "grammar_test_support.h"
#include "grammars/compiled_grammar.h"
#include "grammars/matcher.h"

namespace agentrt::grammars {
namespace {

using ojson = nlohmann::ordered_json;

class SchemaChecker {
 public:
  explicit SchemaChecker(const std::string& schema_text, JsonSchemaOptions options = {})
      : compiled_(compile(grammar_from_json_schema(ojson::parse(schema_text), options),
                          testing::small_index())) {}
  bool accepts(const std::string& text) const {
    GrammarMatcher m(compiled_);
    return m.accept_bytes(text) && m.can_end();
  }

 private:
  std::shared_ptr<const CompiledGrammar> compiled_;
};

void expect_instances(const std::string& schema, const std::vector<std::string>& good,
                      const std::vector<std::string>& bad, JsonSchemaOptions options = {}) {
  SchemaChecker c(schema, options);
  for (const auto& g : good)
    EXPECT_TRUE(c.accepts(g)) << "schema " << schema << " should accept " << g;
  for (const auto& b : bad)
    EXPECT_FALSE(c.accepts(b)) << "schema " << schema << " should reject " << b;
}

std::string compile_error(const std::string& schema) {
  try {
    json_schema_to_ebnf(ojson::parse(schema));
  } catch (const GrammarError& e) {
    return e.what();
  }
  return "";
}

TEST(JsonSchemaTypes, SingleAndMultipleTypes) {
  expect_instances(R"({"type":"null"})", {"null"}, {"0", "\"null\"", "nul"});
  expect_instances(R"({"type":"boolean"})", {"true", "false"}, {"1", "null"});
  expect_instances(R"({"type":"integer"})", {"0", "-7", "123456789012345678901234"},
                   {"1.5", "01", "1e3", "\"1\""});
  expect_instances(R"({"type":"number"})", {"0", "-0.5", "1e-7", "2.5E+10", "12"},
                   {".5", "1.", "+1", "0x1"});
  expect_instances(R"({"type":["string","null"]})", {"\"a\"", "null"}, {"1", "[]"});
  expect_instances(R"({})", {"{\"a\":[1,{\"b\":null}]}", "\"x\"", "true"}, {"{a:1}", "[1,]"});
  expect_instances(R"(true)", {"1"}, {"x"});
}

TEST(JsonSchemaStrings, EscapesAndLengthsCountCodePoints) {
  expect_instances(R"({"type":"string"})", {R"("")", R"("a\"b\\c\n\u00e9")", "\"日本\""},
                   {"\"a", "\"\x01\"", R"("\x")"});
  expect_instances(R"({"type":"string","minLength":2,"maxLength":3})",
                   {R"("ab")", R"("abc")", "\"é日\"", R"("\n\t")", R"("a\"")"},
                   {R"("a")", R"("abcd")", "\"é\""});
  expect_instances(R"({"type":"string","maxLength":0})", {R"("")"}, {R"("a")"});
}

TEST(JsonSchemaStrings, PatternsUseSearchSemantics) {
  expect_instances(R"({"type":"string","pattern":"^[a-z]+-[0-9]{2}$"})", {R"("ab-12")"},
                   {R"("ab-1")", R"("Ab-12")", R"("ab-123")"});
  expect_instances(R"({"type":"string","pattern":"b+"})", {R"("abbc")", R"("b")"}, {R"("ac")"});
  // The pattern constrains the decoded string: a quote in the class is written \" in JSON.
  expect_instances(R"({"type":"string","pattern":"^[\"a]*$"})", {R"("a\"a")"}, {R"("b")"});
  expect_instances(R"({"type":"string","pattern":"^\\d+$","minLength":2,"maxLength":3})",
                   {R"("12")", R"("123")"}, {R"("1")", R"("1234")", R"("1a")"});
  EXPECT_NE(compile_error(R"({"type":"string","pattern":"(?=a)b"})").find("lookaround"),
            std::string::npos);
}

TEST(JsonSchemaStrings, Formats) {
  expect_instances(
      R"({"format":"date-time","type":"string"})",
      {R"("2024-02-29T12:30:00Z")", R"("2023-01-31T23:59:59.123+05:30")"},
      {R"("2023-02-29T12:00:00Z")", R"("2023-13-01T00:00:00Z")", R"("2023-01-01 00:00:00Z")"});
  expect_instances(R"({"format":"date"})", {R"("2000-02-29")"},
                   {R"("1900-02-29")", R"("2021-04-31")"});
  expect_instances(R"({"format":"time"})", {R"("08:30:00Z")"}, {R"("24:00:00Z")", R"("08:30")"});
  expect_instances(R"({"format":"duration"})", {R"("P1Y2M3DT4H5M6S")", R"("PT1M")", R"("P2W")"},
                   {R"("P")", R"("P1Y2D")", R"("PT")"});
  expect_instances(R"({"format":"email"})", {R"("a.b+c@example.com")"},
                   {R"("a@")", R"("@b.c")", R"("a b@c")"});
  expect_instances(R"({"format":"hostname"})", {R"("api.example-1.com")"},
                   {R"("-a.com")", R"("a..b")"});
  expect_instances(R"({"format":"ipv4"})", {R"("192.168.0.1")"},
                   {R"("256.1.1.1")", R"("01.1.1.1")", R"("1.1.1")"});
  expect_instances(R"({"format":"ipv6"})", {R"("::1")", R"("2001:db8::ff00:42:8329")"},
                   {R"("2001:::1")", R"("12345::")"});
  expect_instances(R"({"format":"uuid"})", {R"("123e4567-e89b-12d3-a456-426614174000")"},
                   {R"("123e4567e89b12d3a456426614174000")"});
  expect_instances(R"({"format":"uri"})", {R"("https://example.com/a?b=1#c")", R"("urn:isbn:123")"},
                   {R"("/relative/path")", R"("http://a b")"});
  expect_instances(R"({"format":"uri-reference"})",
                   {R"("/relative/path?x=1")", R"("http://x.y")", R"("#frag")"},
                   {R"("a b")", R"("x#a#b")"});
  // Unknown formats are annotations; formats validators assert but we cannot are errors.
  expect_instances(R"({"type":"string","format":"int32"})", {R"("anything")"}, {"1"});
  EXPECT_EQ(compile_error(R"({"type":"string","format":"regex"})"),
            "/: format 'regex' is not supported");
}

TEST(JsonSchemaNumbers, IntegerRangesAreExact) {
  expect_instances(R"({"type":"integer","minimum":-15,"maximum":230})",
                   {"-15", "-1", "0", "9", "10", "199", "230"}, {"-16", "231", "1000", "-100"});
  expect_instances(R"({"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":100})", {"1", "99"},
                   {"0", "100"});
  expect_instances(R"({"type":"integer","minimum":1.5})", {"2", "1000000"}, {"1", "0"});
  expect_instances(R"({"type":"integer","maximum":-3})", {"-3", "-40"}, {"-2", "0", "5"});
  expect_instances(R"({"type":"integer","minimum":9223372036854775807})",
                   {"9223372036854775807", "99999999999999999999"}, {"9223372036854775806"});
  EXPECT_NE(compile_error(R"({"type":"integer","minimum":5,"maximum":4})").find("unsatisfiable"),
            std::string::npos);
}

TEST(JsonSchemaNumbers, NumberBoundsAndMultipleOf) {
  expect_instances(R"({"type":"number","minimum":0,"maximum":1})",
                   {"0", "0.5", "1", "1.0", "0.999"}, {"-0.1", "1.01", "2"});
  expect_instances(R"({"type":"number","exclusiveMinimum":0})", {"0.001", "5"}, {"0", "0.0", "-1"});
  expect_instances(R"({"type":"number","minimum":2.5,"maximum":10.25})",
                   {"2.5", "2.75", "3", "10.25", "10.2"}, {"2.4", "2.49", "10.26", "11"});
  expect_instances(R"({"type":"number","exclusiveMaximum":-1.5})", {"-1.6", "-2", "-100.25"},
                   {"-1.5", "-1", "0"});
  expect_instances(R"({"type":"integer","multipleOf":7})", {"0", "14", "-21", "700"},
                   {"1", "15", "-22"});
  expect_instances(R"({"type":"number","multipleOf":0.01})", {"1", "1.5", "1.25", "1.250"},
                   {"1.255", "0.001"});
  EXPECT_NE(compile_error(R"({"type":"number","multipleOf":0.3})").find("/: multipleOf"),
            std::string::npos);
}

TEST(JsonSchemaObjects, PropertiesRequiredAdditional) {
  const std::string schema =
      R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},
      "required":["a"],"additionalProperties":false})";
  expect_instances(
      schema, {R"({"a":1})", R"({"a":1,"b":"x"})", R"({"b":"x","a":1})"},
      {R"({})", R"({"b":"x"})", R"({"a":"1"})", R"({"a":1,"c":2})", R"({"a":1,"a":2})"});
  expect_instances(
      R"({"properties":{"a":{"type":"integer"}},"additionalProperties":{"type":"boolean"}})",
      {R"({"a":1,"x":true})", R"({"x":false,"a":2})", R"({})"}, {R"({"x":1})", R"({"a":true})"});
  expect_instances(R"({"type":"object"})", {R"({"anything":[1]})"}, {"[]"});
}

// Additional keys leave the named ones with plain ASCII characters, non-ASCII ones or escapes
// (a shared rule where the named keys go on in plain ASCII, the full unit where they do not).
TEST(JsonSchemaObjects, AdditionalKeysLeaveNamedOnesAnyWay) {
  const std::string schema = R"({"properties":{"ab":{"type":"integer"},"n\u00e4":{"type":"integer"},
      "q\"":{"type":"integer"}},"additionalProperties":{"type":"boolean"}})";
  expect_instances(
      schema,
      {R"({"ab":1})", R"({"a":true})", R"({"abc":true})", R"({"a\u0001":true})", R"({"a\"":true})",
       R"({"a\\b":true})", "{\"a\x7f\":true}", "{\"a\xc3\xa9\":true}", "{\"\xe6\x97\xa5\":true}",
       R"({"n":true})", "{\"n\xc3\xa4\":1}", "{\"n\xc3\xa4x\":true}", "{\"n\xc3\xa5\":true}",
       R"({"q\"":1})", R"({"q":true})", R"({"q\\":true})", R"({"":true})"},
      {R"({"ab":true})", "{\"n\xc3\xa4\":true}", R"({"q\"":true})", R"({"a\u0022":true})",
       R"({"a\/":true})", R"({"a":1})", R"({"abc":1})"});
}

// Objects of at most six properties: every subset holding the required ones, in every order,
// each property at most once (each state of the object calls its remaining members as rules).
TEST(JsonSchemaObjects, SmallObjectsTakeEachPropertyOnceInAnyOrder) {
  SchemaChecker c(R"({"type":"object","properties":{"a":{"type":"integer"},"b":{},"c":{},
      "d":{"type":"string"}},"required":["a","c"],"additionalProperties":false})");
  const std::vector<std::string> members = {R"("a":1)", R"("b":null)", R"("c":[])", R"("d":"x")"};
  for (unsigned subset = 0; subset < 16; ++subset) {
    std::vector<size_t> order;
    for (size_t j = 0; j < 4; ++j) {
      if (subset & (1u << j)) order.push_back(j);
    }
    const bool complete = (subset & 1u) && (subset & 4u);
    do {
      std::string text = "{";
      for (size_t k = 0; k < order.size(); ++k) text += (k ? "," : "") + members[order[k]];
      text += "}";
      EXPECT_EQ(c.accepts(text), complete) << text;
      if (!order.empty()) {
        // The same property twice is refused wherever it comes.
        EXPECT_FALSE(c.accepts(text.substr(0, text.size() - 1) + "," + members[order[0]] + "}"))
            << text;
      }
    } while (std::next_permutation(order.begin(), order.end()));
  }
  EXPECT_FALSE(c.accepts(R"({"a":"1","c":1})"));
  EXPECT_FALSE(c.accepts(R"({"a":1,"c":1,"e":1})"));
}

// Rule names keep the end of the schema path (the specific part), short: references are much
// of a large schema's grammar.
TEST(JsonSchemaObjects, RuleNamesKeepTheEndOfThePath) {
  const std::string ebnf = json_schema_to_ebnf(ojson::parse(R"({"$defs":{
      "https://kubernetesjsonschema.dev/v1.18.1/_definitions.json#/definitions/io.k8s.api.core.v1.PodSpec":
      {"type":"object","properties":{"hostname":{"type":"string","maxLength":8},"x":{},"y":{}}}},
      "$ref":"#/$defs/https:~1~1kubernetesjsonschema.dev~1v1.18.1~1_definitions.json#~1definitions~1io.k8s.api.core.v1.PodSpec"})"));
  size_t rules = 0;
  for (size_t pos = 0; (pos = ebnf.find(" ::= ", pos)) != std::string::npos; pos += 5) {
    const size_t start = ebnf.rfind('\n', pos) == std::string::npos ? 0 : ebnf.rfind('\n', pos) + 1;
    const std::string name = ebnf.substr(start, pos - start);
    EXPECT_LE(name.size(), 40u) << name;
    ++rules;
  }
  EXPECT_GT(rules, 4u);
  EXPECT_NE(ebnf.find("v1-PodSpec"), std::string::npos) << ebnf;
  EXPECT_NE(ebnf.find("hostname-string"), std::string::npos) << ebnf;
}

// Objects with more than six properties take them in any order when few are required
// (MaskBench instances list properties in their own order).
TEST(JsonSchemaObjects, LargeObjectsTakePropertiesInAnyOrder) {
  const std::string schema = R"({"type":"object","properties":{"a":{},"b":{},"c":{},"d":{},"e":{},
      "f":{},"g":{"type":"integer"},"h":{}},"required":["g","a"],"additionalProperties":false})";
  expect_instances(
      schema, {R"({"a":1,"g":2})", R"({"h":1,"g":2,"b":3,"a":4})", R"({"g":1,"a":2,"f":3})"},
      {R"({"a":1})", R"({"a":1,"g":2,"g":3})", R"({"a":1,"g":"x"})", R"({"a":1,"g":2,"z":3})"});
  // The optional members and additional keys share one rule between the object's states.
  const std::string open = R"({"type":"object","properties":{"a":{},"b":{},"c":{},"d":{},"e":{},
      "f":{},"g":{"type":"integer"},"h":{"type":"string"}},"required":["g"],
      "additionalProperties":{"type":"boolean"}})";
  expect_instances(open,
                   {R"({"g":1})", R"({"z":true,"g":2,"h":"x"})",
                    R"({"h":"y","g":2,"b":3,"hh":false})", R"({"g":1,"a":null,"a":[1]})"},
                   {R"({})", R"({"z":true})", R"({"g":1,"g":2})", R"({"g":1,"h":2})",
                    R"({"g":1,"z":1})", R"({"g":1,"z":true,"h":3})"});
}

// MaskBench Github_medium---o57617.json: eight required properties, written in another order.
TEST(JsonSchemaObjects, EightRequiredPropertiesInAnyOrder) {
  const std::string schema = R"({"type":"object","properties":{"a":{},"b":{},"c":{},"d":{},"e":{},
      "f":{},"g":{},"h":{}},"required":["a","b","c","d","e","f","g","h"],"additionalProperties":false})";
  expect_instances(schema, {R"({"h":1,"g":1,"f":1,"e":1,"d":1,"c":1,"b":1,"a":1})"},
                   {R"({"h":1,"g":1,"f":1,"e":1,"d":1,"c":1,"b":1})",
                    R"({"a":1,"a":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1})"});
}

TEST(JsonSchemaObjects, StrictOrderFollowsProperties) {
  JsonSchemaOptions strict;
  strict.strict_property_order = true;
  expect_instances(R"({"properties":{"b":{},"a":{}},"additionalProperties":false})",
                   {R"({"b":1,"a":2})", R"({"a":2})"}, {R"({"a":2,"b":1})"}, strict);
}

TEST(JsonSchemaObjects, PatternPropertiesPropertyNamesCounts) {
  expect_instances(
      R"({"patternProperties":{"^x-":{"type":"integer"}},"additionalProperties":false})",
      {R"({"x-a":1,"x-b":2})", R"({})"}, {R"({"y":1})", R"({"x-a":"s"})"});
  expect_instances(R"({"type":"object","propertyNames":{"pattern":"^[a-z]+$"}})", {R"({"abc":1})"},
                   {R"({"aB":1})"});
  expect_instances(R"({"type":"object","minProperties":1,"maxProperties":2})",
                   {R"({"a":1})", R"({"a":1,"b":2})"}, {R"({})", R"({"a":1,"b":2,"c":3})"});
  expect_instances(
      R"({"properties":{"a":{}},"required":["a","b"],"additionalProperties":{"type":"null"}})",
      {R"({"a":1,"b":null})"}, {R"({"a":1})", R"({"a":1,"b":2})"});
}

TEST(JsonSchemaArrays, ItemsPrefixItemsCountsContains) {
  expect_instances(R"({"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":3})",
                   {"[1]", "[1,2,3]"}, {"[]", "[1,2,3,4]", "[\"a\"]"});
  expect_instances(R"({"prefixItems":[{"type":"string"},{"type":"integer"}],"items":false})",
                   {"[]", "[\"a\"]", "[\"a\",1]"}, {"[1]", "[\"a\",1,2]"});
  expect_instances(
      R"({"items":[{"type":"string"}],"additionalItems":{"type":"boolean"},"minItems":2})",
      {"[\"a\",true,false]", "[\"a\",true]"}, {"[\"a\"]", "[\"a\",1]"});
  expect_instances(R"({"type":"array","contains":{"const":5}})", {"[5]", "[1,5,2]"},
                   {"[]", "[1,2]"});
}

// MaskBench JsonSchemaStore---behat.json and others accepted arrays with repeated items.
TEST(JsonSchemaArrays, UniqueItemsExactOverFewValuesElseAnError) {
  expect_instances(R"({"type":"array","items":{"enum":["a","b","c"]},"uniqueItems":true})",
                   {"[]", R"(["a","c"])", R"(["c","b","a"])"},
                   {R"(["a","a"])", R"(["a","b","a"])", R"(["d"])"});
  expect_instances(R"({"items":{"type":"boolean"},"uniqueItems":true,"minItems":2})",
                   {"[true,false]", "[false,true]"},
                   {"[true]", "[true,true]", "[true,false,true]"});
  // Equal values are one value: 1 and 1.0.
  expect_instances(R"({"items":{"enum":[1,1.0,2]},"uniqueItems":true})", {"[1,2]"},
                   {"[1,1]", "[2,1,2]"});
  // At most one item: nothing to enforce.
  expect_instances(R"({"items":{"type":"string"},"uniqueItems":true,"maxItems":1})",
                   {R"(["x"])", "[]"}, {R"(["x","y"])"});
  const std::string strings = R"({"items":{"type":"string"},"uniqueItems":true})";
  EXPECT_EQ(compile_error(strings).find("/: uniqueItems"), 0u) << compile_error(strings);
  JsonSchemaOptions approximate;
  approximate.approximate = true;
  expect_instances(strings, {R"(["x","x"])"}, {"[1]"}, approximate);  // not enforced
}

TEST(JsonSchemaValues, EnumConst) {
  expect_instances(R"({"enum":["a",1,null,{"k":[true]}]})",
                   {R"("a")", "1", "null", R"({"k":[true]})"}, {R"("b")", "2"});
  expect_instances(R"({"type":"string","enum":["a",1,"bb"],"maxLength":1})", {R"("a")"},
                   {"1", R"("bb")"});
  expect_instances(R"({"const":"x"})", {R"("x")"}, {R"("y")"});
}

TEST(JsonSchemaCombinators, AnyOfOneOfAllOfNot) {
  expect_instances(R"({"anyOf":[{"type":"integer"},{"type":"string","maxLength":1}]})",
                   {"1", R"("a")"}, {R"("ab")", "null"});
  // Exclusivity is enforced where the branches are required-name sets.
  expect_instances(R"({"type":"object","oneOf":[{"required":["a"]},{"required":["b"]}]})",
                   {R"({"a":1})", R"({"b":1})"}, {R"({"a":1,"b":2})", R"({})"});
  // MaskBench Github_hard---o38403.json: nine required-name branches, one exactly.
  expect_instances(
      R"({"type":"object","oneOf":[{"required":["a"]},{"required":["b"]},{"required":["c"]},
      {"required":["d"]},{"required":["e"]},{"required":["f"]},{"required":["g"]}]})",
      {R"({"a":1})", R"({"g":1,"x":2})"}, {R"({"a":1,"g":2})", R"({"x":1})"});
  // Overlapping branches whose negation is not expressible: an error unless approximating
  // (then anyOf). MaskBench JsonSchemaStore---tye-schema.json accepted an instance matching two.
  const std::string overlapping = R"({"type":"string","oneOf":[{"pattern":"a"},{"pattern":"b"}]})";
  EXPECT_EQ(compile_error(overlapping).find("/oneOf/0: oneOf branch may overlap"), 0u)
      << compile_error(overlapping);
  JsonSchemaOptions approximate;
  approximate.approximate = true;
  expect_instances(overlapping, {R"("a")", R"("b")", R"("ab")"}, {R"("c")"}, approximate);
  // MaskBench Github_medium---o53111.json: a branch requiring a name the other forbids.
  expect_instances(
      R"({"oneOf":[{"type":"object","properties":{"g":{}},"required":["g"],"additionalProperties":false},
      {"type":"object","properties":{"gs":{},"id":{}},"additionalProperties":false}]})",
      {R"({"g":1})", R"({"gs":1})", "{}"}, {R"({"g":1,"gs":2})", R"({"x":1})"});
  // MaskBench Github_medium---o26217.json: untyped branches told apart by a discriminator
  // among objects; non-objects satisfy both, so neither.
  expect_instances(R"({"oneOf":[{"properties":{"t":{"enum":["a"]}},"required":["t"]},
      {"properties":{"t":{"enum":["b"]}},"required":["t"]}]})",
                   {R"({"t":"a"})", R"({"t":"b","x":1})"}, {R"({"t":"c"})", R"("s")", "1"});
  // MaskBench Github_medium---o71267.json (jsend): branches told apart by a property whose
  // pattern is one literal.
  expect_instances(R"({"type":"object","oneOf":[
      {"required":["status","data"],"properties":{"status":{"type":"string","pattern":"^success$"}}},
      {"required":["status","data"],"properties":{"status":{"type":"string","pattern":"^fail$"}}}]})",
                   {R"({"status":"success","data":1})", R"({"status":"fail","data":null})"},
                   {R"({"status":"other","data":1})", R"({"status":"fail"})"});
  // MaskBench Github_medium---o25692.json: "not required" is only part of "not b" when b asks
  // more; a branch requiring the same names would be left empty: an error instead.
  const std::string requires_same = R"({"type":"object","oneOf":[
      {"required":["a"],"properties":{"a":{"type":"string","pattern":"x"}}},
      {"required":["a"],"properties":{"a":{"type":"string","pattern":"y"}}}]})";
  EXPECT_EQ(compile_error(requires_same).find("/oneOf/0: oneOf branch may overlap"), 0u)
      << compile_error(requires_same);
  expect_instances(R"({"allOf":[{"type":"integer","minimum":0},{"maximum":10}]})", {"0", "10"},
                   {"-1", "11", "1.5"});
  expect_instances(R"({"properties":{"a":{"type":"string"}},"allOf":[{"required":["a"]}]})",
                   {R"({"a":"x"})"}, {R"({})"});
  expect_instances(R"({"not":{"type":"string"}})", {"1", "null", "[]"}, {R"("a")"});
  expect_instances(R"({"type":"string","not":{"enum":["a","b"]}})", {R"("c")", R"("ab")", R"("")"},
                   {R"("a")", R"("b")"});
  expect_instances(R"({"type":"object","not":{"required":["a"]}})", {R"({"b":1})"}, {R"({"a":1})"});
  expect_instances(R"({"properties":{"a":{"not":{}}}})", {R"({"b":1})"}, {R"({"a":1})"});
  // not {bound}: the flipped bound on its type, every other type as it is.
  expect_instances(R"({"not":{"minimum":3}})", {"2", "-1.5", R"("x")", "null"}, {"3", "7"});
  expect_instances(R"({"type":"string","not":{"maxLength":2}})", {R"("abc")"},
                   {R"("ab")", R"("")"});
  // A `not` that is no schema: a GrammarError at most, never another exception.
  EXPECT_NO_THROW(compile_error(R"({"not":5})"));
  EXPECT_NO_THROW(compile_error(R"({"not":[1]})"));
}

TEST(JsonSchemaRefs, DefsDefinitionsRecursionAndPointers) {
  expect_instances(R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},
      "next":{"anyOf":[{"$ref":"#/$defs/node"},{"type":"null"}]}},"required":["v","next"],"additionalProperties":false}},
      "$ref":"#/$defs/node"})",
                   {R"({"v":1,"next":null})", R"({"v":1,"next":{"v":2,"next":null}})"},
                   {R"({"v":1,"next":{"v":2}})"});
  expect_instances(
      R"({"definitions":{"a":{"type":"integer"}},"properties":{"x":{"$ref":"#/definitions/a"},
      "y":{"$ref":"#/properties/x"}}})",
      {R"({"x":1,"y":2})"}, {R"({"y":"s"})"});
  expect_instances(R"({"type":"array","items":{"$ref":"#"},"maxItems":2})", {"[]", "[[],[[]]]"},
                   {"[1]"});
  EXPECT_NE(compile_error(R"({"$ref":"http://example.com/x.json"})").find("/: $ref"),
            std::string::npos);
}

// 50,000 nested schemas (or a const value nested as deep) overflowed the stack in the $ref
// index and in dump(); past kMaxSchemaNesting they are an error naming the path.
TEST(JsonSchemaLimits, DeepNestingIsAnErrorNotAStackOverflow) {
  auto nested = [](const std::string& open, const std::string& inner, const std::string& close,
                   int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += open;
    s += inner;
    for (int i = 0; i < n; ++i) s += close;
    return s;
  };
  const std::string items = nested(R"({"type":"array","items":)", "{}", "}", 50'000);
  const std::string error = compile_error(items);
  EXPECT_EQ(error.rfind("/items/items/items", 0), 0u) << error.substr(0, 80);
  EXPECT_NE(error.find(": schema nested more than 512 levels deep"), std::string::npos);
  EXPECT_NE(compile_error(nested(R"({"anyOf":[)", "{}", "]}", 50'000)).find("nested more than 512"),
            std::string::npos);
  const std::string deep_const = R"({"const":)" + nested("[", "", "]", 50'000) + "}";
  EXPECT_EQ(compile_error(deep_const).rfind("/const/0/0/0", 0), 0u);
  try {
    json_schema_to_ebnf(nlohmann::json::parse(deep_const));
    ADD_FAILURE() << "no error";
  } catch (const GrammarError& e) {
    EXPECT_NE(std::string(e.what()).find("nested more than 512"), std::string::npos);
  }
  // Within the limit the compiler's own depth bound still gives its error.
  EXPECT_NE(compile_error(nested(R"({"type":"array","items":)", "{}", "}", 250)).find("too deep"),
            std::string::npos);
}

// Drafts before 2019-09 ignore the keywords beside $ref (MaskBench Github_medium---o14421.json:
// {"type": "string", "$ref": ...} under draft-04 is the referenced object schema).
TEST(JsonSchemaRefs, OlderDraftsIgnoreSiblingsOfRef) {
  const std::string body =
      R"("definitions":{"o":{"type":"object"}},"properties":{"s":{"type":"string","$ref":"#/definitions/o"}}})";
  expect_instances(R"({"$schema":"http://json-schema.org/draft-04/schema#",)" + body,
                   {R"({"s":{}})"}, {R"({"s":"x"})"});
  expect_instances(R"({"$schema":"https://json-schema.org/draft/2020-12/schema",)" + body, {"{}"},
                   {R"({"s":{}})", R"({"s":"x"})"});
}

TEST(JsonSchemaErrors, UnsupportedKeywordsNameThePath) {
  EXPECT_EQ(compile_error(R"({"properties":{"a":{"items":{"if":{},"then":{}}}}})"),
            "/properties/a/items: unsupported keyword 'if'");
  EXPECT_NE(compile_error(R"({"type":"integer","minimum":5,"maximum":1})").find("unsatisfiable"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"unevaluatedProperties":false})")
                .find("unsupported keyword 'unevaluatedProperties'"),
            std::string::npos);
  // Keywords of the wrong JSON type next to enum values (found by fuzz/json_schema_grammar.cc):
  // an error naming the schema, not an exception from the JSON library.
  EXPECT_NE(compile_error(R"({"type":5,"enum":[1,2]})").find("/: cannot check enum/const values"),
            std::string::npos);
  EXPECT_NE(compile_error(R"({"enum":[{"a":1}],"required":[7]})").find("malformed schema"),
            std::string::npos);
}

TEST(JsonSchemaWhitespace, FlexibleIsBounded) {
  JsonSchemaOptions flexible;
  flexible.whitespace = JsonSchemaOptions::Whitespace::flexible;
  flexible.max_whitespace = 2;
  expect_instances(
      R"({"type":"object","properties":{"a":{"type":"array","items":{"type":"integer"}}}})",
      {R"({ "a" : [ 1 , 2 ] })", "{\n\"a\":[1]\n}", R"({"a":[]})"}, {R"({   "a":[1]})"}, flexible);
  expect_instances(R"({"type":"object"})", {R"({"a":1})"}, {R"({ "a":1})"});
}

}  // namespace
}  // namespace agentrt::grammars
