// The DSML tool-call grammar: blocks written the way DeepSeek's encoding_dsv4.py renders them
// are accepted; wrong tool names, missing required parameters, bad values and extra calls are
// rejected.
#include "grammars/tool_call_grammar.h"

#include <gtest/gtest.h>

#include "grammar_test_support.h"
#include "grammars/compiled_grammar.h"
#include "grammars/matcher.h"

namespace agentrt::grammars {
namespace {

using ojson = nlohmann::ordered_json;

const std::string kBar = "｜DSML｜";

// One parameter line as encode_arguments_to_dsml writes it.
std::string param(const std::string& name, const ojson& value) {
  const bool is_str = value.is_string();
  return "<" + kBar + "parameter name=\"" + name + "\" string=\"" + (is_str ? "true" : "false") +
         "\">" + (is_str ? value.get<std::string>() : value.dump()) + "</" + kBar + "parameter>";
}

std::string invoke(const std::string& name, const std::vector<std::string>& params) {
  std::string args;
  for (size_t i = 0; i < params.size(); ++i) args += (i ? "\n" : "") + params[i];
  return "<" + kBar + "invoke name=\"" + name + "\">\n" + args + "\n</" + kBar + "invoke>";
}

std::string block(const std::vector<std::string>& invokes) {
  std::string calls;
  for (size_t i = 0; i < invokes.size(); ++i) calls += (i ? "\n" : "") + invokes[i];
  return std::string(kDsmlToolCallsOpener) + "\n" + calls + "\n" + std::string(kDsmlToolCallsCloser);
}

std::vector<ToolSignature> tools() {
  return {
      {"get_weather", ojson::parse(R"({"type":"object","properties":{
          "location":{"type":"string","description":"City"},
          "unit":{"type":"string","enum":["celsius","fahrenheit"]},
          "days":{"type":"integer","minimum":1,"maximum":14}},"required":["location"]})")},
      {"add", ojson::parse(R"({"type":"object","properties":{"a":{"type":"number"},"b":{"type":"number"},
          "tags":{"type":"array","items":{"type":"string"}}},"required":["a","b"]})")},
      {"now", ojson::parse(R"({"type":"object","properties":{}})")},
  };
}

class ToolCallChecker {
 public:
  explicit ToolCallChecker(const ToolCallGrammarOptions& options = {})
      : compiled_(compile(tool_calls_grammar(tools(), options), testing::small_index())) {}
  bool accepts(const std::string& text) const {
    GrammarMatcher m(compiled_);
    return m.accept_bytes(text) && m.can_end();
  }

 private:
  std::shared_ptr<const CompiledGrammar> compiled_;
};

TEST(ToolCallGrammar, OpenerIsTheDsmlTag) {
  EXPECT_EQ(kDsmlToolCallsOpener, "<\xEF\xBD\x9C" "DSML\xEF\xBD\x9C" "tool_calls>");
}

TEST(ToolCallGrammar, AcceptsEncoderFormattedCalls) {
  ToolCallChecker c;
  EXPECT_TRUE(c.accepts(block({invoke("get_weather", {param("location", "Paris")})})));
  EXPECT_TRUE(c.accepts(block({invoke("get_weather", {param("location", "a < b & c"), param("unit", "celsius"),
                                                      param("days", 3)})})));
  EXPECT_TRUE(c.accepts(block({invoke("add", {param("a", 1.5), param("b", -2), param("tags", ojson::array({"x", "y"}))})})));
  EXPECT_TRUE(c.accepts(block({invoke("now", {})})));
  // Parallel calls.
  EXPECT_TRUE(c.accepts(block({invoke("now", {}), invoke("add", {param("a", 1), param("b", 2)})})));
}

TEST(ToolCallGrammar, RejectsWrongNamesMissingParametersAndBadValues) {
  ToolCallChecker c;
  EXPECT_FALSE(c.accepts(block({invoke("get_wether", {param("location", "Paris")})})));
  EXPECT_FALSE(c.accepts(block({invoke("get_weather", {param("unit", "celsius")})})));  // location missing
  EXPECT_FALSE(c.accepts(block({invoke("get_weather", {param("location", "Paris"), param("unit", "kelvin")})})));
  EXPECT_FALSE(c.accepts(block({invoke("get_weather", {param("location", "Paris"), param("days", 15)})})));
  EXPECT_FALSE(c.accepts(block({invoke("add", {param("a", "1"), param("b", 2)})})));  // string="true" for a number
  EXPECT_FALSE(c.accepts(block({invoke("add", {param("a", 1), param("b", 2), param("c", 3)})})));  // undeclared
  EXPECT_FALSE(c.accepts(block({invoke("get_weather", {param("location", "x</" + kBar + "parameter>")})})));
  // A string parameter written as JSON (string="false") is not the encoder's format.
  std::string json_string = "<" + kBar + "parameter name=\"location\" string=\"false\">\"Paris\"</" + kBar + "parameter>";
  EXPECT_FALSE(c.accepts(block({invoke("get_weather", {json_string})})));
  EXPECT_FALSE(c.accepts(block({invoke("now", {param("x", 1)})})));
  EXPECT_FALSE(c.accepts(block({})));  // no call at all
  EXPECT_FALSE(c.accepts("hello " + block({invoke("now", {})})));  // no leading text by default
}

TEST(ToolCallGrammar, ParallelForcedAndLeadingTextOptions) {
  ToolCallGrammarOptions single;
  single.parallel_calls = false;
  ToolCallChecker one(single);
  EXPECT_TRUE(one.accepts(block({invoke("now", {})})));
  EXPECT_FALSE(one.accepts(block({invoke("now", {}), invoke("now", {})})));

  ToolCallGrammarOptions forced;
  forced.forced_tool = "add";
  ToolCallChecker f(forced);
  EXPECT_TRUE(f.accepts(block({invoke("add", {param("a", 1), param("b", 2)})})));
  EXPECT_FALSE(f.accepts(block({invoke("now", {})})));

  ToolCallGrammarOptions lead;
  lead.allow_leading_text = true;
  ToolCallChecker l(lead);
  EXPECT_TRUE(l.accepts("Let me check.\n\n" + block({invoke("now", {})})));
  EXPECT_TRUE(l.accepts(block({invoke("now", {})})));
}

TEST(ToolCallGrammar, ErrorsNameTheTool) {
  EXPECT_THROW(tool_calls_ebnf({}, {}), GrammarError);
  ToolCallGrammarOptions forced;
  forced.forced_tool = "missing";
  EXPECT_THROW(tool_calls_ebnf(tools(), forced), GrammarError);
  std::vector<ToolSignature> bad = {{"f", ojson::parse(R"({"type":"object","properties":{"x":{"if":{},"then":{}}}})")}};
  try {
    tool_calls_ebnf(bad, {});
    FAIL() << "expected a GrammarError";
  } catch (const GrammarError& e) {
    EXPECT_EQ(std::string(e.what()), "tool 'f': /properties/x: unsupported keyword 'if'");
  }
}

}  // namespace
}  // namespace agentrt::grammars
