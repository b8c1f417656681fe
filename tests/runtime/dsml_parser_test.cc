#include "runtime/chat/dsml_parser.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "runtime/chat/encode_v4.h"

namespace agentrt::chat {
namespace {

const std::string kTwoCalls =
    "Let me check both.\n\n<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">São \"Paulo\"\n<b></｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"search\">\n"
    "<｜DSML｜parameter name=\"filters\" string=\"false\">{\"site\": \"x.org\", \"n\": [1, "
    "2]}</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>";

struct Collected {
  DsmlStreamParser::Final final;
  std::string content, reasoning;
  std::vector<std::string> names, args;
  int errors = 0;
};

Collected parse_in_chunks(const std::string& text, const std::vector<size_t>& cuts,
                          bool thinking = false) {
  DsmlStreamParser parser(thinking);
  Collected c;
  const auto consume = [&](const std::vector<ParseEvent>& events) {
    for (const auto& e : events) {
      switch (e.kind) {
        case ParseEvent::Kind::content_delta:
          c.content += e.text;
          break;
        case ParseEvent::Kind::reasoning_delta:
          c.reasoning += e.text;
          break;
        case ParseEvent::Kind::tool_call_start:
          c.names.push_back(e.name);
          c.args.emplace_back();
          break;
        case ParseEvent::Kind::tool_call_arguments_delta:
          c.args.at(e.index) += e.text;
          break;
        case ParseEvent::Kind::tool_call_end:
          EXPECT_EQ(c.args.at(e.index), e.text);
          break;
        case ParseEvent::Kind::error:
          ++c.errors;
          break;
      }
    }
  };
  size_t prev = 0;
  for (size_t cut : cuts) {
    consume(parser.feed(text.substr(prev, cut - prev)));
    prev = cut;
  }
  consume(parser.feed(text.substr(prev)));
  c.final = parser.finish(false);
  consume(parser.take_final_events());
  return c;
}

void expect_two_calls(const Collected& c) {
  EXPECT_EQ(c.content, "Let me check both.");
  EXPECT_EQ(c.final.content, "Let me check both.");
  ASSERT_EQ(c.final.tool_calls.size(), 2u);
  EXPECT_EQ(c.final.tool_calls[0].name, "get_weather");
  EXPECT_EQ(nlohmann::json::parse(c.final.tool_calls[0].arguments_json),
            nlohmann::json::parse(R"({"city": "São \"Paulo\"\n<b>", "days": 3})"));
  EXPECT_EQ(nlohmann::json::parse(c.final.tool_calls[1].arguments_json),
            nlohmann::json::parse(R"({"filters": {"site": "x.org", "n": [1, 2]}})"));
  EXPECT_EQ(c.final.tool_calls[0].id, "call_0");
  EXPECT_EQ(c.final.tool_calls[1].id, "call_1");
  EXPECT_EQ(c.args[0], c.final.tool_calls[0].arguments_json);
  EXPECT_EQ(c.errors, 0);
  EXPECT_FALSE(c.final.truncated);
}

TEST(DsmlParser, WholeText) { expect_two_calls(parse_in_chunks(kTwoCalls, {})); }

TEST(DsmlParser, SplitAtEveryByte) {
  for (size_t cut = 1; cut < kTwoCalls.size(); ++cut) {
    SCOPED_TRACE(cut);
    expect_two_calls(parse_in_chunks(kTwoCalls, {cut}));
  }
  std::vector<size_t> every;
  for (size_t i = 1; i < kTwoCalls.size(); ++i) every.push_back(i);
  expect_two_calls(parse_in_chunks(kTwoCalls, every));
}

TEST(DsmlParser, RandomChunkings) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<size_t> cuts;
    for (size_t p = 1 + rng() % 7; p < kTwoCalls.size(); p += 1 + rng() % 9) cuts.push_back(p);
    expect_two_calls(parse_in_chunks(kTwoCalls, cuts));
  }
}

TEST(DsmlParser, ArgumentsMatchWhatTheEncoderWouldRender) {
  // Round trip: encoder renders a call, parser recovers the same arguments object.
  const std::string args = R"({"query": "a \"b\" <c>", "limit": 5, "opts": {"x": [1.5, null]}})";
  const std::string text = std::string(kToolCallsStart) + "\n" +
                           render_dsml_invoke("search", args) + "\n</｜DSML｜tool_calls>";
  const auto c = parse_in_chunks(text, {});
  ASSERT_EQ(c.final.tool_calls.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(c.final.tool_calls[0].arguments_json),
            nlohmann::json::parse(args));
}

TEST(DsmlParser, ReasoningThenContent) {
  const auto c =
      parse_in_chunks("I think so.</think>The answer is 4.", {3, 14, 15}, /*thinking=*/true);
  EXPECT_EQ(c.reasoning, "I think so.");
  EXPECT_EQ(c.content, "The answer is 4.");
  EXPECT_TRUE(c.final.tool_calls.empty());
}

TEST(DsmlParser, PlainContentWithMarkerLikeText) {
  const std::string text = "Use <｜DSML｜ tags carefully\n\nand <b>html</b>.\n\n";
  const auto c = parse_in_chunks(text, {5, 9});
  EXPECT_EQ(c.content, text);
  EXPECT_EQ(c.errors, 0);
}

TEST(DsmlParser, TruncatedCallIsReported) {
  DsmlStreamParser parser(false);
  parser.feed(
      "x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" "
      "string=\"true\">par");
  const auto final = parser.finish(true);
  EXPECT_TRUE(final.truncated);
  EXPECT_TRUE(final.tool_calls.empty());
  EXPECT_NE(final.error.find("max tokens"), std::string::npos);
}

TEST(DsmlParser, MalformedIsAnErrorNotACrash) {
  for (const std::string bad : {
           "\n\n<｜DSML｜tool_calls>\ngarbage",
           "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" "
           "string=\"maybe\">1</｜DSML｜parameter>",
           "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" "
           "string=\"false\">{bad</｜DSML｜parameter>",
           "\n\n<｜DSML｜tool_calls>\n</｜DSML｜tool_calls> trailing",
       }) {
    const auto c = parse_in_chunks(bad, {});
    EXPECT_GE(c.errors, 1) << bad;
    EXPECT_FALSE(c.final.error.empty()) << bad;
  }
}

TEST(DsmlParser, NoParameterCall) {
  const auto c = parse_in_chunks(
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke "
      "name=\"now\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
      {});
  ASSERT_EQ(c.final.tool_calls.size(), 1u);
  EXPECT_EQ(c.final.tool_calls[0].arguments_json, "{}");
  EXPECT_EQ(c.content, "");
}

}  // namespace
}  // namespace agentrt::chat
