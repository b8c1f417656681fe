// WebSocket client events (runtime/server/client_events.h): the envelope, then the payload of
// session.update and conversation.item.create. A malformed event must end in
// std::invalid_argument (a protocol error), never another exception or a crash.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "runtime/server/client_events.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace agentrt::server;
  try {
    const ClientEvent e =
        parse_client_event(std::string(reinterpret_cast<const char*>(data), size));
    if (e.type == ClientEventType::session_update && e.body.contains("session"))
      parse_session_update(e.body["session"]);
    if (e.type == ClientEventType::item_create && e.body.contains("item"))
      parse_conversation_item(e.body["item"]);
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
