// The multi-step loop: model turn -> parse -> validate -> execute calls (concurrently when
// parallel, results appended in call order) -> next turn, until a final answer, max_steps, a
// token or time budget, cancellation, or the same failing call repeated.
#include "runtime/agent.h"

#include <chrono>
#include <future>
#include <map>
#include <random>
#include <stdexcept>

#include "runtime/transcript.h"

namespace agentrt {

namespace {

using Clock = std::chrono::steady_clock;

AgentEvent from_parse_event(const chat::ParseEvent& e, int step) {
  AgentEvent out;
  out.step = step;
  out.index = e.index;
  out.text = e.text;
  out.call_id = e.id;
  out.name = e.name;
  switch (e.kind) {
    case chat::ParseEvent::Kind::reasoning_delta:
      out.kind = AgentEvent::Kind::reasoning_delta;
      break;
    case chat::ParseEvent::Kind::content_delta:
      out.kind = AgentEvent::Kind::text_delta;
      break;
    case chat::ParseEvent::Kind::tool_call_start:
      out.kind = AgentEvent::Kind::tool_call_start;
      break;
    case chat::ParseEvent::Kind::tool_call_arguments_delta:
      out.kind = AgentEvent::Kind::tool_call_arguments_delta;
      break;
    case chat::ParseEvent::Kind::tool_call_end:
      out.kind = AgentEvent::Kind::tool_call_end;
      try {
        out.data = nlohmann::json::parse(e.text);
      } catch (const nlohmann::json::exception&) {
        out.data = e.text;
      }
      break;
    case chat::ParseEvent::Kind::error:
      out.kind = AgentEvent::Kind::error;
      break;
  }
  return out;
}

class LoopSession : public Session {
 public:
  LoopSession(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> tools,
              AgentOptions options, std::string id, std::vector<chat::Message> messages,
              std::unique_ptr<TranscriptWriter> transcript)
      : backend_(std::move(backend)),
        tools_(tools ? tools->extended() : std::make_shared<tools::ToolRegistry>()),
        options_(std::move(options)),
        id_(std::move(id)),
        messages_(std::move(messages)),
        transcript_(std::move(transcript)) {}

  ~LoopSession() override { backend_->release_cache(id_); }

  const std::string& id() const override { return id_; }
  const std::vector<chat::Message>& messages() const override { return messages_; }
  void cancel() override { cancel_.store(true); }
  void add_tool(tools::ToolSpec spec, tools::ToolFunction fn) override {
    tools_->add(std::move(spec), std::move(fn));
  }

  void record_session_start() {
    if (transcript_)
      transcript_->write({{"type", "session"}, {"id", id_}, {"backend", backend_->name()}});
  }

  // Answers calls a crash left without results, so the conversation is well-formed again.
  void answer_interrupted(const std::vector<chat::ToolCall>& calls) {
    for (const auto& call : calls) {
      chat::Message m;
      m.role = chat::Message::Role::tool;
      m.tool_call_id = call.id;
      m.name = call.name;
      m.content =
          "error: the session stopped before this call completed; it was not run to completion";
      append(m);
    }
  }

  TurnResult send(const std::string& user_message, const AgentEventCallback& on_event,
                  const TurnOptions& turn) override {
    cancel_.store(false);
    const auto start = Clock::now();
    const auto emit = [&](AgentEvent e) {
      if (on_event) on_event(e);
    };
    TurnResult result;
    chat::Message user;
    user.role = chat::Message::Role::user;
    user.content = user_message;
    append(user);
    std::map<std::string, int> failures;  // name + arguments -> failed attempts
    ToolChoice choice = turn.tool_choice.value_or(options_.tool_choice);
    const auto finish = [&](StopReason stop, std::string error = {}) {
      result.stop = stop;
      result.error = std::move(error);
      if (!result.error.empty())
        emit({AgentEvent::Kind::error, result.steps, -1, result.error, "", "", {}});
      if (transcript_) {
        transcript_->write({{"type", "turn_end"},
                            {"stop", std::string(to_string(stop))},
                            {"steps", result.steps},
                            {"prompt_tokens", result.usage.prompt_tokens},
                            {"completion_tokens", result.usage.completion_tokens}});
      }
      return result;
    };

    for (int step = 1;; ++step) {
      if (cancel_.load()) return finish(StopReason::cancelled);
      if (step > options_.limits.max_steps)
        return finish(StopReason::max_steps,
                      "stopped after max_steps=" + std::to_string(options_.limits.max_steps) +
                          " model turns");
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      if (options_.limits.max_seconds > 0 && elapsed > options_.limits.max_seconds)
        return finish(StopReason::time_budget, "time budget exhausted");
      const int64_t used = result.usage.prompt_tokens + result.usage.completion_tokens;
      if (options_.limits.max_total_tokens > 0 && used >= options_.limits.max_total_tokens)
        return finish(StopReason::token_budget, "token budget exhausted");

      GenerationRequest request;
      if (!options_.system_prompt.empty()) {
        chat::Message system;
        system.role = chat::Message::Role::system;
        system.content = options_.system_prompt;
        request.messages.push_back(system);
      }
      request.messages.insert(request.messages.end(), messages_.begin(), messages_.end());
      request.tools = tools_->openai_tools();
      request.tool_choice = choice;
      request.parallel_tool_calls = options_.parallel_tool_calls;
      request.response_format = turn.response_format;
      request.sampling = options_.sampling;
      request.max_tokens = options_.max_tokens_per_step;
      if (options_.limits.max_total_tokens > 0) {
        request.max_tokens = static_cast<int>(
            std::min<int64_t>(request.max_tokens, options_.limits.max_total_tokens - used));
      }
      request.encoding = options_.encoding;
      request.constrained = options_.constrained;
      request.value_bounds = options_.value_bounds;
      result.steps = step;

      GenerationResult generated;
      try {
        generated = backend_->generate(
            request, [&](const chat::ParseEvent& e) { emit(from_parse_event(e, step)); }, &cancel_,
            id_);
      } catch (const std::exception& e) {
        return finish(StopReason::error, std::string("backend: ") + e.what());
      }
      result.usage += generated.usage;
      append(generated.message);
      emit({AgentEvent::Kind::step,
            step,
            -1,
            "",
            "",
            "",
            {{"finish", std::string(to_string(generated.finish))},
             {"prompt_tokens", generated.usage.prompt_tokens},
             {"completion_tokens", generated.usage.completion_tokens},
             {"seconds", generated.seconds}}});
      if (generated.finish == FinishReason::cancelled || cancel_.load())
        return finish(StopReason::cancelled);
      if (generated.finish == FinishReason::error && generated.message.tool_calls.empty()) {
        return finish(StopReason::error, generated.error.empty()
                                             ? "the model's output could not be used"
                                             : generated.error);
      }
      // After a forced first call the model decides freely.
      if (choice.mode == ToolChoice::Mode::required || choice.mode == ToolChoice::Mode::named)
        choice = ToolChoice{};

      if (generated.message.tool_calls.empty()) {
        result.final_text = generated.message.content;
        if (turn.response_format) {
          try {
            result.structured = nlohmann::json::parse(result.final_text);
          } catch (const nlohmann::json::exception& e) {
            return finish(
                StopReason::error,
                std::string("final answer is not the JSON the response_format asks for: ") +
                    e.what());
          }
        }
        AgentEvent final_event{AgentEvent::Kind::final, step, -1, result.final_text, "", "", {}};
        if (result.structured) final_event.data = *result.structured;
        emit(final_event);
        if (generated.finish == FinishReason::length)
          return finish(StopReason::token_budget, "the answer hit max_tokens");
        return finish(StopReason::final_answer);
      }

      // Execute the calls; results are appended in call order.
      const auto& calls = generated.message.tool_calls;
      std::vector<tools::ToolResult> results(calls.size());
      const auto run_one = [&](size_t i) {
        nlohmann::json args;
        try {
          args = nlohmann::json::parse(calls[i].arguments_json.empty() ? "{}"
                                                                       : calls[i].arguments_json);
        } catch (const nlohmann::json::exception& e) {
          return tools::ToolResult::error("validation",
                                          std::string("arguments are not valid JSON: ") + e.what());
        }
        tools::ToolContext ctx = options_.tool_context;
        ctx.cancel = &cancel_;
        // Retry policy: a call that timed out is retried (up to max_call_retries) before its
        // result goes back to the model; other failures go back at once.
        tools::ToolResult r = tools_->call(calls[i].name, args, ctx);
        for (int retry = 0; retry < options_.limits.max_call_retries && r.error_kind == "timeout" &&
                            !cancel_.load();
             ++retry) {
          r = tools_->call(calls[i].name, args, ctx);
        }
        return r;
      };
      if (options_.parallel_tool_calls && calls.size() > 1) {
        std::vector<std::future<tools::ToolResult>> futures;
        for (size_t i = 0; i < calls.size(); ++i)
          futures.push_back(std::async(std::launch::async, run_one, i));
        for (size_t i = 0; i < calls.size(); ++i) results[i] = futures[i].get();
      } else {
        for (size_t i = 0; i < calls.size(); ++i) results[i] = run_one(i);
      }
      bool repeated = false;
      for (size_t i = 0; i < calls.size(); ++i) {
        const auto& r = results[i];
        ++result.tool_calls;
        emit({AgentEvent::Kind::tool_result, step, static_cast<int>(i), r.content, calls[i].id,
              calls[i].name, r.to_json()});
        chat::Message tool_message;
        tool_message.role = chat::Message::Role::tool;
        tool_message.tool_call_id = calls[i].id;
        tool_message.name = calls[i].name;
        tool_message.content = r.ok ? r.content : "error (" + r.error_kind + "): " + r.content;
        append(tool_message);
        if (!r.ok && r.error_kind != "cancelled") {
          const int n = ++failures[calls[i].name + "\n" + calls[i].arguments_json];
          if (n > options_.limits.max_identical_failures) repeated = true;
        }
      }
      if (cancel_.load()) return finish(StopReason::cancelled);
      if (repeated)
        return finish(StopReason::repeated_failure,
                      "the same failing tool call was repeated; stopping");
    }
  }

 private:
  void append(const chat::Message& m) {
    messages_.push_back(m);
    if (transcript_)
      transcript_->write(
          {{"type", "message"},
           {"message", nlohmann::json::parse(chat::to_openai(m).dump(
                           -1, ' ', false, nlohmann::json::error_handler_t::replace))}});
  }

  std::shared_ptr<Backend> backend_;
  std::shared_ptr<tools::ToolRegistry> tools_;
  AgentOptions options_;
  std::string id_;
  std::vector<chat::Message> messages_;
  std::unique_ptr<TranscriptWriter> transcript_;
  std::atomic<bool> cancel_{false};
};

}  // namespace

std::string_view to_string(StopReason reason) {
  switch (reason) {
    case StopReason::final_answer:
      return "final_answer";
    case StopReason::max_steps:
      return "max_steps";
    case StopReason::token_budget:
      return "token_budget";
    case StopReason::time_budget:
      return "time_budget";
    case StopReason::cancelled:
      return "cancelled";
    case StopReason::repeated_failure:
      return "repeated_failure";
    case StopReason::error:
      return "error";
  }
  return "error";
}

std::string_view to_string(AgentEvent::Kind kind) {
  switch (kind) {
    case AgentEvent::Kind::text_delta:
      return "text_delta";
    case AgentEvent::Kind::reasoning_delta:
      return "reasoning_delta";
    case AgentEvent::Kind::tool_call_start:
      return "tool_call_start";
    case AgentEvent::Kind::tool_call_arguments_delta:
      return "tool_call_arguments_delta";
    case AgentEvent::Kind::tool_call_end:
      return "tool_call_end";
    case AgentEvent::Kind::tool_result:
      return "tool_result";
    case AgentEvent::Kind::step:
      return "step";
    case AgentEvent::Kind::final:
      return "final";
    case AgentEvent::Kind::error:
      return "error";
  }
  return "error";
}

nlohmann::json to_json(const AgentEvent& e) {
  nlohmann::json j = {{"type", std::string(to_string(e.kind))}, {"step", e.step}};
  if (e.index >= 0) j["index"] = e.index;
  if (!e.text.empty()) j["text"] = e.text;
  if (!e.call_id.empty()) j["call_id"] = e.call_id;
  if (!e.name.empty()) j["name"] = e.name;
  if (!e.data.is_null()) j["data"] = e.data;
  return j;
}

Agent::Agent(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> tools,
             AgentOptions options)
    : backend_(std::move(backend)), tools_(std::move(tools)), options_(std::move(options)) {
  if (!backend_) throw std::invalid_argument("Agent: a backend is required");
  if (!tools_) tools_ = std::make_shared<tools::ToolRegistry>();
}

std::unique_ptr<Session> Agent::new_session(std::optional<std::filesystem::path> transcript_path) {
  std::unique_ptr<TranscriptWriter> writer;
  if (transcript_path) writer = std::make_unique<TranscriptWriter>(*transcript_path);
  auto session = std::make_unique<LoopSession>(backend_, tools_, options_, new_session_id(),
                                               std::vector<chat::Message>{}, std::move(writer));
  session->record_session_start();
  return session;
}

std::unique_ptr<Session> Agent::resume_session(const std::filesystem::path& transcript_path) {
  LoadedTranscript loaded = load_transcript(transcript_path);
  auto session = std::make_unique<LoopSession>(
      backend_, tools_, options_, loaded.session_id.empty() ? new_session_id() : loaded.session_id,
      std::move(loaded.messages), std::make_unique<TranscriptWriter>(transcript_path));
  session->answer_interrupted(loaded.unanswered_calls);
  return session;
}

std::string new_session_id() {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "sess_";
  for (int i = 0; i < 16; ++i) id += kHex[rd() % 16];
  return id;
}

}  // namespace agentrt
