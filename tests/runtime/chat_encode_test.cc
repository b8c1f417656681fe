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
