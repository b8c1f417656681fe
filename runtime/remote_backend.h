// Any OpenAI-compatible Chat Completions server (DeepSeek's API, vLLM or SGLang serving V4)
// over libcurl with SSE streaming: retries with exponential backoff on 429/5xx and connection
// failures (only before any output arrived), connect and total timeouts, an API key from the
// environment, cancellation. The tool-call grammar can go along as the server's guided-decoding
// parameter (vLLM `structured_outputs.grammar`, SGLang `ebnf`); calls are validated against
// their schemas here either way.
#pragma once

#include <chrono>
#include <string>

#include "runtime/backend.h"

namespace agentrt {

struct RemoteBackendOptions {
  std::string base_url;  // e.g. http://127.0.0.1:8000/v1
  std::string model;     // the request's "model"
  std::string api_key_env = "OPENAI_API_KEY";
  std::string guided_decoding = "none";  // none | vllm | sglang
  int max_attempts = 4;
  std::chrono::milliseconds backoff{200};
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds total_timeout{600000};
};

class RemoteBackend : public Backend {
 public:
  explicit RemoteBackend(RemoteBackendOptions options);
  std::string name() const override { return "remote"; }
  GenerationResult generate(const GenerationRequest& request, const GenerationCallback& on_event,
                            const std::atomic<bool>* cancel,
                            std::string_view cache_key = {}) override;
  // The JSON body sent for a request (exposed for tests).
  nlohmann::json request_body(const GenerationRequest& request) const;

 private:
  RemoteBackendOptions options_;
};

}  // namespace agentrt
