// A Backend turns a conversation into one assistant message: the native engine
// in-process, a remote OpenAI-compatible server, or a scripted fake for tests.
// The agent loop (agent.h) drives it step by step.
#pragma once

#include <atomic>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"
#include "runtime/chat/dsml_parser.h"
#include "runtime/chat/encode_v4.h"
#include "runtime/chat/messages.h"

namespace agentrt {

// OpenAI `tool_choice`: "auto" | "none" | "required" | {"type":"function","function":{"name":...}}.
struct ToolChoice {
  enum class Mode { automatic, none, required, named };
  Mode mode = Mode::automatic;
  std::string name;  // for Mode::named

  static ToolChoice from_json(const nlohmann::json& value);  // throws naming the bad value
  nlohmann::json to_json() const;
};

struct GenerationRequest {
  std::vector<chat::Message> messages;
  nlohmann::ordered_json tools =
      nlohmann::ordered_json::array();  // OpenAI tools array (order kept)
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;
  // OpenAI response_format: {"type":"json_schema","json_schema":{"name":..,"schema":{..}}} or
  // {"type":"json_object"}; constrains the final answer.
  std::optional<nlohmann::json> response_format;
  engine::SamplingParams sampling;
  int max_tokens = 1024;
  chat::EncodeOptions encoding;
  // A random or weak model can write a string, number or array forever. Bounds set here (0 =
  // off) are added to tool parameter schemas that have none, so every call the grammar allows
  // also ends. The toolcall benchmark and the demo's random model use them.
  struct ValueBounds {
    int max_string_chars = 0;
    int max_array_items = 0;
    int64_t max_abs_integer = 0;
  } value_bounds;
  // Native: mask every sampled token with the grammar. Remote: send the grammar as the
  // server's guided-decoding parameter. Off only for measurements (bench --unconstrained).
  bool constrained = true;
};

enum class FinishReason { stop, tool_calls, length, cancelled, error };
std::string_view to_string(FinishReason reason);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // prefix reused from the sequence cache
  Usage& operator+=(const Usage& other);
};

struct GenerationResult {
  chat::Message message;  // role assistant: content, reasoning_content, tool_calls
  FinishReason finish = FinishReason::stop;
  Usage usage;
  std::string error;  // set when finish == error (or the output could not be parsed)
  double seconds = 0;
};

// Receives parse events (text/reasoning deltas, tool-call start/argument deltas/end) as
// tokens arrive.
using GenerationCallback = std::function<void(const chat::ParseEvent&)>;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Thread-safe for different cache keys; the caller serialises calls with the same key.
  // cache_key names a conversation whose KV/compressor cache may be reused across turns.
  virtual GenerationResult generate(const GenerationRequest& request,
                                    const GenerationCallback& on_event,
                                    const std::atomic<bool>* cancel,
                                    std::string_view cache_key = {}) = 0;
  // Frees whatever the backend keeps for cache_key (a finished or disconnected session).
  virtual void release_cache(std::string_view /*cache_key*/) {}
};

}  // namespace agentrt
