#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "runtime/chat/encode_v4.h"

namespace agentrt::chat {
namespace {

using ojson = nlohmann::ordered_json;

ojson load_cases() {
  const auto path =
      std::filesystem::path(AGENTRT_SOURCE_DIR) / "tests/runtime/fixtures/encoding/cases.json";
  std::ifstream in(path);
  return ojson::parse(in)["cases"];
}

TEST(EncodeV4, ByteIdenticalToDeepSeekEncoder) {
  const ojson cases = load_cases();
  ASSERT_GE(cases.size(), 25u);
  for (const auto& c : cases) {
    EncodeOptions options;
    options.thinking = c.value("thinking_mode", "chat") == "thinking" ? ThinkingMode::thinking
                                                                      : ThinkingMode::non_thinking;
    options.drop_thinking = c.value("drop_thinking", true);
    options.add_bos = c.value("add_default_bos_token", true);
    if (c.contains("reasoning_effort") && c["reasoning_effort"].is_string())
      options.reasoning_effort = c["reasoning_effort"];
    const ojson context = c.contains("context") ? c["context"] : ojson::array();
    EXPECT_EQ(encode_v4_json(c["messages"], options, context), c["expected"].get<std::string>())
        << "case " << c["name"];
  }
}

TEST(EncodeV4, RequestToolsGoOnTheSystemMessage) {
  // The runtime path: typed messages + the request's tools array.
  const ojson cases = load_cases();
  for (const auto& c : cases) {
    if (c["name"] != "tools_call_result") continue;
    ojson messages = c["messages"];
    const ojson tools = messages[0]["tools"];
    messages[0].erase("tools");
    const auto typed = parse_messages(nlohmann::json::parse(messages.dump()));
    EXPECT_EQ(encode_v4(typed, tools, {}), c["expected"].get<std::string>());
  }
}

TEST(Messages, ErrorsNameTheIndexAndField) {
  try {
    parse_messages(nlohmann::json::parse(R"([{"role":"user","content":"x"},{"role":"robot"}])"));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("messages[1].role"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_messages(nlohmann::json::parse(R"([{"role":"tool","content":"x"}])")),
               std::invalid_argument);
  const auto m = parse_messages(nlohmann::json::parse(
      R"([{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}])"));
  ASSERT_EQ(m[0].tool_calls.size(), 1u);
  EXPECT_EQ(m[0].tool_calls[0].arguments_json, "{\"a\":1}");
}

// A message nested 50,000 deep (tool-call arguments as an object) overflowed the stack in
// dump(); arguments given as a string of JSON that deep overflowed in encode_v4. Found by
// deep-input probes of fuzz_chat_messages (ASan).
TEST(Messages, DeepNestingIsAnErrorNotAStackOverflow) {
  const std::string deep = std::string(50'000, '[') + std::string(50'000, ']');
  const std::string call = R"([{"role":"assistant","content":"x","tool_calls":[{"type":"function",)"
                           R"("function":{"name":"f","arguments":)";
  try {
    parse_messages(nlohmann::json::parse(call + R"({"a":)" + deep + "}}}]}]"));
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "messages[0]: nested more than 128 levels deep");
  }
  const auto as_string = parse_messages(
      nlohmann::json::parse(call + nlohmann::json(R"({"a":)" + deep + "}").dump() + "}}]}]"));
  try {
    encode_v4(as_string, ojson::array(), {});
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "tool call 'f': arguments nested more than 128 levels deep");
  }
  // The message, tool_calls, the call, function and arguments are 5 levels; 123 more are fine.
  const std::string ok = std::string(123, '[') + std::string(123, ']');
  EXPECT_NO_THROW(
      encode_v4(parse_messages(nlohmann::json::parse(call + R"({"a":)" + ok + "}}}]}]")),
                ojson::array(), {}));
}

}  // namespace
}  // namespace agentrt::chat

#include "runtime/chat/encode_v3.h"

namespace agentrt::chat {
namespace {

TEST(EncodeV3, ByteIdenticalToTheV3ChatTemplate) {
  const auto path =
      std::filesystem::path(AGENTRT_SOURCE_DIR) / "tests/runtime/fixtures/encoding/v3_cases.json";
  std::ifstream in(path);
  const auto cases = nlohmann::json::parse(in)["cases"];
  ASSERT_GE(cases.size(), 8u);
  for (const auto& c : cases) {
    const auto messages = parse_messages(c["messages"]);
    EncodeV3Options options;
    options.add_generation_prompt = c["add_generation_prompt"];
    EXPECT_EQ(encode_v3(messages, options), c["expected"].get<std::string>()) << c["name"];
  }
}

}  // namespace
}  // namespace agentrt::chat
