// Client-supplied message lists: parse, then encode in both formats.
#include <cstddef>
#include <cstdint>

#include "runtime/chat/encode_v3.h"
#include "runtime/chat/encode_v4.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto json = nlohmann::json::parse(data, data + size, nullptr, false);
  if (json.is_discarded()) return 0;
  try {
    const auto messages = agentrt::chat::parse_messages(json);
    agentrt::chat::encode_v4(messages, nlohmann::ordered_json::array(), {});
    agentrt::chat::encode_v3(messages);
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
