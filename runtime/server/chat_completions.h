// POST /v1/chat/completions: one assistant turn in OpenAI's format (the client runs the tools),
// as one JSON response or as SSE chunks (content, tool_calls deltas with index/id/arguments,
// finish_reason, usage, [DONE]).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <string>

#include "runtime/backend.h"
#include "runtime/server/server.h"

namespace agentrt::server {

struct CompletionContext {
  Backend& backend;
  const std::string& model_name;
  ServerMetrics& metrics;
};

// Parses an OpenAI request body into a GenerationRequest; throws std::invalid_argument naming
// the field. Sets `stream` from the body.
GenerationRequest parse_chat_request(const std::string& body, bool& stream, bool& include_usage);

void serve_chat_completion(boost::asio::ip::tcp::socket& socket, const std::string& body,
                           const CompletionContext& ctx);

}  // namespace agentrt::server
