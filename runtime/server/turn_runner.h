// One response of a WebSocket session: the agent loop over the session's pending user input,
// run on a work thread. Events go to the connection's Outbox (waiting while the client reads
// slowly); if the client is gone or too slow the turn is cancelled. Client-side tools send
// response.function_call_arguments.done and wait for the client's function_call_output.
#pragma once

#include <string>

#include "runtime/server/outbox.h"
#include "runtime/server/server_context.h"

namespace agentrt::server {

void run_turn(const std::shared_ptr<SessionState>& state, Outbox& outbox, ServerContext& ctx,
              const std::string& event_id);

}  // namespace agentrt::server
