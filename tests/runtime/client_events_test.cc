// WebSocket client events: malformed input is a std::invalid_argument whose message starts with
// the protocol error code.
#include "runtime/server/client_events.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

namespace agentrt::server {
namespace {

std::string error_of(const std::string& text) {
  try {
    parse_client_event(text);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// A session.update whose tool parameters nest 50,000 deep overflowed the stack when the session
// copied them (deep-input probe of fuzz_server_events, ASan).
TEST(ClientEvents, DeepNestingIsInvalidJsonNotAStackOverflow) {
  std::string params;
  for (int i = 0; i < 50'000; ++i) params += R"({"a":)";
  params += "{}" + std::string(50'000, '}');
  EXPECT_EQ(error_of(R"({"type":"session.update","session":{"tools":[{"type":"function",)"
                     R"("name":"f","parameters":)" +
                     params + "}]}}"),
            "invalid_json: the message nests more than 128 levels deep");
  EXPECT_EQ(error_of(R"({"type":"response.create","x":)" + std::string(129, '[') +
                     std::string(129, ']') + "}"),
            "invalid_json: the message nests more than 128 levels deep");
  EXPECT_EQ(error_of(R"({"type":"response.create","x":)" + std::string(127, '[') +
                     std::string(127, ']') + "}"),
            "");
}

}  // namespace
}  // namespace agentrt::server
