#include "runtime/remote_backend.h"

#include <curl/curl.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <thread>

#include "grammars/tool_call_grammar.h"
#include "runtime/native_backend.h"
#include "tools/json_schema_validator.h"

namespace agentrt {

namespace {

// Accumulates a streamed response: SSE lines become OpenAI deltas, forwarded as parse events.
struct StreamState {
  const GenerationCallback* on_event = nullptr;
  const std::atomic<bool>* cancel = nullptr;
  std::string pending;   // bytes not yet forming a whole line
  std::string raw_body;  // for non-SSE (error) bodies
  bool any_data = false;
  bool done = false;
  std::string content, reasoning, finish_reason;
  struct Call {
    std::string id, name, arguments;
  };
  std::map<int, Call> calls;
  Usage usage;
  std::string error;

  void emit(chat::ParseEvent e) {
    if (*on_event) (*on_event)(e);
  }
  void on_line(const std::string& line) {
    if (line.rfind("data:", 0) != 0) return;
    std::string data = line.substr(5);
    while (!data.empty() && data[0] == ' ') data.erase(0, 1);
    if (data == "[DONE]") {
      done = true;
      return;
    }
    nlohmann::json chunk;
    try {
      chunk = nlohmann::json::parse(data);
    } catch (const nlohmann::json::exception& e) {
      error = std::string("malformed SSE data from the server: ") + e.what();
      return;
    }
    any_data = true;
    if (chunk.contains("usage") && chunk["usage"].is_object()) {
      usage.prompt_tokens = chunk["usage"].value("prompt_tokens", int64_t{0});
      usage.completion_tokens = chunk["usage"].value("completion_tokens", int64_t{0});
    }
    if (!chunk.contains("choices") || !chunk["choices"].is_array() || chunk["choices"].empty())
      return;
    const auto& choice = chunk["choices"][0];
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
      finish_reason = choice["finish_reason"];
    const nlohmann::json delta = choice.contains("delta")
                                     ? choice["delta"]
                                     : choice.value("message", nlohmann::json::object());
    if (delta.contains("reasoning_content") && delta["reasoning_content"].is_string()) {
      const std::string t = delta["reasoning_content"];
      reasoning += t;
      emit({chat::ParseEvent::Kind::reasoning_delta, -1, t, "", ""});
    }
    if (delta.contains("content") && delta["content"].is_string()) {
      const std::string t = delta["content"];
      content += t;
      emit({chat::ParseEvent::Kind::content_delta, -1, t, "", ""});
    }
    if (delta.contains("tool_calls") && delta["tool_calls"].is_array()) {
      for (const auto& tc : delta["tool_calls"]) {
        const int index = tc.value("index", static_cast<int>(calls.size()));
        Call& call = calls[index];
        const bool is_new = call.name.empty();
        if (tc.contains("id") && tc["id"].is_string()) call.id = tc["id"];
        if (tc.contains("function")) {
          const auto& fn = tc["function"];
          if (fn.contains("name") && fn["name"].is_string())
            call.name += fn["name"].get<std::string>();
          if (is_new && !call.name.empty())
            emit({chat::ParseEvent::Kind::tool_call_start, index, "", call.id, call.name});
          if (fn.contains("arguments") && fn["arguments"].is_string()) {
            const std::string piece = fn["arguments"];
            call.arguments += piece;
            emit({chat::ParseEvent::Kind::tool_call_arguments_delta, index, piece, call.id,
                  call.name});
          }
        }
      }
    }
  }
};

size_t on_write(char* ptr, size_t size, size_t n, void* user) {
  auto* s = static_cast<StreamState*>(user);
  const size_t len = size * n;
  s->pending.append(ptr, len);
  if (s->raw_body.size() < 65536)
    s->raw_body.append(ptr, std::min(len, 65536 - s->raw_body.size()));
  for (size_t nl; (nl = s->pending.find('\n')) != std::string::npos;) {
    std::string line = s->pending.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    s->pending.erase(0, nl + 1);
    s->on_line(line);
  }
  return len;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* s = static_cast<StreamState*>(user);
  return s->cancel && s->cancel->load() ? 1 : 0;
}

}  // namespace

RemoteBackend::RemoteBackend(RemoteBackendOptions options) : options_(std::move(options)) {
  if (options_.base_url.empty()) throw std::invalid_argument("remote backend: base URL is empty");
  while (!options_.base_url.empty() && options_.base_url.back() == '/')
    options_.base_url.pop_back();
  if (options_.guided_decoding != "none" && options_.guided_decoding != "vllm" &&
      options_.guided_decoding != "sglang") {
    throw std::invalid_argument("remote backend: guided_decoding must be none, vllm or sglang");
  }
}

nlohmann::json RemoteBackend::request_body(const GenerationRequest& request) const {
  nlohmann::json body;
  body["model"] = options_.model.empty() ? "default" : options_.model;
  body["messages"] =
      nlohmann::json::parse(chat::to_openai(request.messages)
                                .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  body["max_tokens"] = request.max_tokens;
  if (!request.sampling.greedy()) {
    body["temperature"] = request.sampling.temperature;
    if (request.sampling.top_p < 1.0f) body["top_p"] = request.sampling.top_p;
  } else {
    body["temperature"] = 0;
  }
  body["seed"] = request.sampling.seed;
  const bool has_tools = request.tools.is_array() && !request.tools.empty();
  if (has_tools) {
    body["tools"] = nlohmann::json::parse(request.tools.dump());
    body["tool_choice"] = request.tool_choice.to_json();
    body["parallel_tool_calls"] = request.parallel_tool_calls;
  }
  if (request.response_format) body["response_format"] = *request.response_format;
  if (request.constrained && has_tools && options_.guided_decoding != "none" &&
      request.tool_choice.mode != ToolChoice::Mode::none &&
      request.tool_choice.mode != ToolChoice::Mode::automatic) {
    // Forced calls: the DSML grammar constrains the raw text on servers that take a grammar.
    std::vector<grammars::ToolSignature> signatures;
    for (const auto& tool : request.tools) {
      const auto& fn = tool.contains("function") ? tool["function"] : tool;
      signatures.push_back(
          {fn.at("name").get<std::string>(),
           normalize_tool_schema(fn.value("parameters", nlohmann::ordered_json::object()))});
    }
    grammars::ToolCallGrammarOptions go;
    go.parallel_calls = request.parallel_tool_calls;
    if (request.tool_choice.mode == ToolChoice::Mode::named)
      go.forced_tool = request.tool_choice.name;
    const std::string ebnf = grammars::tool_calls_ebnf(signatures, go);
    if (options_.guided_decoding == "vllm")
      body["structured_outputs"] = {{"grammar", ebnf}};
    else
      body["ebnf"] = ebnf;
  }
  return body;
}

GenerationResult RemoteBackend::generate(const GenerationRequest& request,
                                         const GenerationCallback& on_event,
                                         const std::atomic<bool>* cancel, std::string_view) {
  const auto start = std::chrono::steady_clock::now();
  const std::string body =
      request_body(request).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string auth;
  if (const char* key = std::getenv(options_.api_key_env.c_str()); key && *key)
    auth = std::string("Authorization: Bearer ") + key;
  GenerationResult result;
  std::string last_error;
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(options_.backoff * (1 << (attempt - 1)));
    StreamState state;
    state.on_event = &on_event;
    state.cancel = cancel;
    std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
    std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers(nullptr, curl_slist_free_all);
    curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: text/event-stream");
    if (!auth.empty()) h = curl_slist_append(h, auth.c_str());
    headers.reset(h);
    const std::string url = options_.base_url + "/chat/completions";
    curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &state);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFODATA, &state);
    curl_easy_setopt(curl.get(), CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(options_.connect_timeout.count()));
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS,
                     static_cast<long>(options_.total_timeout.count()));
    const CURLcode rc = curl_easy_perform(curl.get());
    long status = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_ABORTED_BY_CALLBACK) {
      result.finish = FinishReason::cancelled;
      return result;
    }
    const bool retryable =
        (rc != CURLE_OK && rc != CURLE_OPERATION_TIMEDOUT) || status == 429 || status >= 500;
    if (rc != CURLE_OK || status >= 400) {
      last_error = rc != CURLE_OK
                       ? std::string(curl_easy_strerror(rc))
                       : "HTTP " + std::to_string(status) + ": " + state.raw_body.substr(0, 300);
      if (retryable && !state.any_data) continue;
      break;
    }
    if (!state.any_data && state.raw_body.rfind("{", 0) == 0) {
      // A server that ignored stream:true answered with one JSON document.
      try {
        const auto doc = nlohmann::json::parse(state.raw_body);
        state.on_line("data: " + doc.dump());
      } catch (const nlohmann::json::exception&) {
      }
    }
    if (!state.error.empty()) {
      last_error = state.error;
      break;
    }
    result.message.role = chat::Message::Role::assistant;
    result.message.content = state.content;
    result.message.reasoning_content = state.reasoning;
    for (auto& [index, call] : state.calls) {
      if (call.id.empty()) call.id = "call_" + std::to_string(index);
      if (call.arguments.empty()) call.arguments = "{}";
      result.message.tool_calls.push_back({call.id, call.name, call.arguments});
      if (on_event)
        on_event(
            {chat::ParseEvent::Kind::tool_call_end, index, call.arguments, call.id, call.name});
    }
    // Servers without a tool parser return DSML in the content: parse it here.
    if (result.message.tool_calls.empty() &&
        state.content.find(grammars::kDsmlToolCallsOpener) != std::string::npos) {
      chat::DsmlStreamParser parser(false);
      parser.feed(state.content);
      const auto final = parser.finish(state.finish_reason == "length");
      result.message.content = final.content;
      result.message.tool_calls = final.tool_calls;
      if (!final.error.empty()) result.error = final.error;
    }
    // Second lock: arguments must validate against the declared schemas.
    for (const auto& call : result.message.tool_calls) {
      const nlohmann::ordered_json* schema = nullptr;
      for (const auto& tool : request.tools) {
        const auto& fn = tool.contains("function") ? tool["function"] : tool;
        if (fn.value("name", "") == call.name) schema = &fn["parameters"];
      }
      std::string problem;
      if (!schema) {
        problem = "unknown tool '" + call.name + "'";
      } else {
        try {
          const auto errors =
              tools::validate(nlohmann::json::parse(normalize_tool_schema(*schema).dump()),
                              nlohmann::json::parse(call.arguments_json));
          if (!errors.empty()) problem = call.name + ": " + tools::describe(errors);
        } catch (const std::exception& e) {
          problem = call.name + ": " + e.what();
        }
      }
      if (!problem.empty()) result.error += (result.error.empty() ? "" : "; ") + problem;
    }
    result.usage = state.usage;
    result.finish = !result.message.tool_calls.empty() ? FinishReason::tool_calls
                    : state.finish_reason == "length"  ? FinishReason::length
                                                       : FinishReason::stop;
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
  }
  result.finish = FinishReason::error;
  result.error = "remote backend " + options_.base_url + ": " + last_error;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace agentrt
