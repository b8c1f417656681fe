// One HTTP connection (plain or TLS): reads a request under a deadline, checks Origin and the
// bearer key, and answers /health, /v1/models, /metrics and /v1/chat/completions, or hands a
// /v1/sessions upgrade to a realtime session. Its handlers run on the socket's strand; a chat
// completion runs on a work thread and streams through the connection's bounded Outbox.
#pragma once

#include "runtime/server/realtime_session.h"

namespace agentrt::server {

template <class Stream>
void start_http_connection(Stream stream, ServerContext& ctx);

}  // namespace agentrt::server
