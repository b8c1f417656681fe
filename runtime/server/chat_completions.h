// POST /v1/chat/completions: one assistant turn in OpenAI's format (the client runs the tools),
// as one JSON response or as SSE chunks (content, tool_calls deltas with index/id/arguments,
// finish_reason, usage, [DONE]).
#pragma once

#include <functional>
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

// Writes the raw bytes of an HTTP response; false once the client is gone (the generation is
// then cancelled, freeing its cache). May wait while the client reads slowly (backpressure).
using ByteSink = std::function<bool(std::string)>;

// Runs on a work thread (it blocks in the backend): the whole HTTP response goes to `write`.
void serve_chat_completion(const std::string& body, const CompletionContext& ctx,
                           const ByteSink& write);

// A complete HTTP/1.1 response with Connection: close.
std::string http_response(unsigned status, const std::string& body,
                          const std::string& content_type = "application/json");

}  // namespace agentrt::server
