// The WebSocket sessions of a server, by id. A session outlives its connection so that a client
// whose connection dropped can resume it by id within the grace period; its conversation is the
// JSON Lines transcript in sessions_dir and its settings a checkpoint file beside it
// (<id>.session.json), so a session can also be resumed after a server restart.
#pragma once

#include <chrono>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/agent.h"
#include "runtime/server/client_events.h"

namespace agentrt::server {

class Closable;  // server_context.h

struct SessionState {
  std::string id;
  std::filesystem::path transcript;
  std::mutex mutex;  // guards everything below
  AgentOptions options;
  std::vector<std::string> builtin_names;
  nlohmann::json client_tools = nlohmann::json::array();  // OpenAI-style function specs
  nlohmann::json settings = nlohmann::json::object();     // merged session.update payloads
  std::vector<std::string> pending_user;
  std::shared_ptr<Session> running;  // the agent session of the turn in progress
  bool turn_active = false;
  // Client-side tool calls waiting for function_call_output, by call id.
  std::map<std::string, std::shared_ptr<std::promise<std::string>>> waiting;
  std::multimap<std::string, std::string> call_ids;  // name + "\n" + args -> call id
  bool attached = false;
  std::weak_ptr<Closable> holder;  // the connection it is attached to
  std::chrono::steady_clock::time_point detached_at;

  // Under `mutex`: stops the running turn and answers waiting client-side calls with `why`.
  void cancel_turn_locked(const std::string& why);
  // Under `mutex`: applies a validated update (the tool names checked against `builtins`).
  void apply_locked(const SessionUpdate& update, const nlohmann::json& raw,
                    const tools::ToolRegistry& builtins);
};

class SessionDirectory {
 public:
  SessionDirectory(std::filesystem::path dir, std::chrono::milliseconds resume_grace);
  const std::filesystem::path& dir() const { return dir_; }

  std::shared_ptr<SessionState> create(const AgentOptions& defaults);
  // A live session, or one restored from its checkpoint; null if unknown or expired. Ids are
  // checked before they touch the file system.
  std::shared_ptr<SessionState> find(const std::string& id, const AgentOptions& defaults,
                                     const tools::ToolRegistry& builtins);
  // Sessions held in memory (attached or within their grace period); expired ones are dropped.
  size_t size();
  void cancel_all(const std::string& why);
  // Writes each session's settings and pending input beside its transcript.
  void checkpoint_all();
  static void checkpoint(SessionState& s);  // under s.mutex

 private:
  void expire_locked();
  std::filesystem::path dir_;
  std::chrono::milliseconds grace_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<SessionState>> sessions_;
};

bool valid_session_id(const std::string& id);

}  // namespace agentrt::server
