// WebSocket tool-calling sessions at /v1/sessions (protocol: docs/server.md). One connection
// object per socket, its handlers on the socket's strand (the Beast async server pattern); a
// response runs the blocking agent loop on a work thread, whose events go through the
// connection's bounded Outbox. Client-side tools pause the loop until the client answers with
// function_call_output (or the timeout passes). Idle and total-time limits close the connection
// with an `error` event and a close reason; a disconnect cancels the running turn.
#pragma once

#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <string>

#include "runtime/server/client_events.h"
#include "runtime/server/server_context.h"

namespace agentrt::server {

using PlainStream = boost::beast::tcp_stream;
using TlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;

// Takes over a stream whose HTTP upgrade request was read (and authorised); `api_key` is what
// per-key limits count against.
template <class Stream>
void start_realtime_session(Stream stream,
                            boost::beast::http::request<boost::beast::http::string_body> req,
                            ServerContext& ctx, std::string api_key);

}  // namespace agentrt::server
