// The embedding API: an Agent (backend + tools + options, shared) hands out Sessions
// (one conversation each). Session::send runs the multi-step loop: model turn -> parse ->
// validate -> execute calls -> append results -> next turn, until a final answer or a
// budget runs out. Events stream to a callback as they happen.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "tools/registry.h"
#include "tools/tool.h"

namespace agentrt {

// A fresh session id, "sess_" and 16 random hex digits (agent sessions, server sessions).
std::string new_session_id();

struct AgentEvent {
  enum class Kind {
    text_delta,
    reasoning_delta,
    tool_call_start,            // call_id, name, index
    tool_call_arguments_delta,  // call_id, index, text
    tool_call_end,              // call_id, name, data = parsed arguments
    tool_result,                // call_id, name, data = ToolResult JSON
    step,                       // a model turn finished; data = {finish, usage}
    final,                      // text = final answer; data = structured answer if any
    error,                      // text = message
  };
  Kind kind;
  int step = 0;
  int index = -1;
  std::string text;
  std::string call_id;
  std::string name;
  nlohmann::json data;
};
std::string_view to_string(AgentEvent::Kind kind);
nlohmann::json to_json(const AgentEvent& event);

using AgentEventCallback = std::function<void(const AgentEvent&)>;

struct LoopLimits {
  int max_steps = 16;            // model turns per send()
  int64_t max_total_tokens = 0;  // prompt + completion over the turn; 0 = none
  double max_seconds = 0;        // wall clock for the turn; 0 = none
  int max_call_retries =
      1;  // a call that timed out is retried this many times before the model sees it
  int max_identical_failures = 2;  // the same failing call (name + args) repeated: stop
};

struct AgentOptions {
  std::string system_prompt;
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;
  engine::SamplingParams sampling;
  int max_tokens_per_step = 1024;
  LoopLimits limits;
  tools::ToolContext tool_context;  // workspace, network, sandbox limits, timeouts
  chat::EncodeOptions encoding;
  bool constrained = true;
  GenerationRequest::ValueBounds value_bounds;
};

struct TurnOptions {
  std::optional<nlohmann::json> response_format;  // structured final answer for this turn
  std::optional<ToolChoice> tool_choice;          // overrides AgentOptions for this turn
};

enum class StopReason {
  final_answer,
  max_steps,
  token_budget,
  time_budget,
  cancelled,
  repeated_failure,
  error
};
std::string_view to_string(StopReason reason);

struct TurnResult {
  StopReason stop = StopReason::final_answer;
  std::string final_text;
  std::optional<nlohmann::json> structured;  // parsed final answer under response_format
  int steps = 0;
  int tool_calls = 0;
  Usage usage;
  std::string error;
};

class Session;

class Agent {
 public:
  Agent(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> tools,
        AgentOptions options);
  // A new conversation; transcript_path (JSON Lines) persists every message and event so a
  // crash mid-step leaves a transcript that resumes.
  std::unique_ptr<Session> new_session(std::optional<std::filesystem::path> transcript_path = {});
  std::unique_ptr<Session> resume_session(const std::filesystem::path& transcript_path);

  const AgentOptions& options() const { return options_; }
  const std::shared_ptr<Backend>& backend() const { return backend_; }
  const std::shared_ptr<tools::ToolRegistry>& tools() const { return tools_; }

 private:
  std::shared_ptr<Backend> backend_;
  std::shared_ptr<tools::ToolRegistry> tools_;
  AgentOptions options_;
};

class Session {
 public:
  virtual ~Session() = default;
  virtual const std::string& id() const = 0;
  // Runs the loop for one user message. Thread: one send() at a time per session.
  virtual TurnResult send(const std::string& user_message, const AgentEventCallback& on_event = {},
                          const TurnOptions& options = {}) = 0;
  // Thread-safe: stops the running send() at the next token or tool boundary.
  virtual void cancel() = 0;
  // Tools only this session sees (e.g. client-side tools of a WebSocket session).
  virtual void add_tool(tools::ToolSpec spec, tools::ToolFunction fn) = 0;
  virtual const std::vector<chat::Message>& messages() const = 0;
};

}  // namespace agentrt
