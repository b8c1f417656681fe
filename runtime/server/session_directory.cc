#include "runtime/server/session_directory.h"

#include <fstream>

namespace agentrt::server {

namespace {

std::filesystem::path checkpoint_path(const SessionState& s) {
  auto p = s.transcript;
  return p.replace_extension(".session.json");
}

}  // namespace

bool valid_session_id(const std::string& id) {
  if (id.size() != 21 || id.rfind("sess_", 0) != 0) return false;
  for (size_t i = 5; i < id.size(); ++i)
    if (!std::isxdigit(static_cast<unsigned char>(id[i]))) return false;
  return true;
}

void SessionState::cancel_turn_locked(const std::string& why) {
  if (running) running->cancel();
  for (auto& [cid, p] : waiting) p->set_value("error: " + why);
  waiting.clear();
}

void SessionState::apply_locked(const SessionUpdate& u, const nlohmann::json& raw,
                                const tools::ToolRegistry& builtins) {
  if (u.tools) {
    for (const auto& name : u.tools->builtin_names)
      if (!builtins.contains(name))
        throw std::invalid_argument("invalid_tool: no server-side tool named '" + name + "'");
  }
  if (u.instructions) options.system_prompt = *u.instructions;
  if (u.tool_choice) options.tool_choice = *u.tool_choice;
  if (u.max_steps) options.limits.max_steps = *u.max_steps;
  if (u.max_tokens) options.max_tokens_per_step = *u.max_tokens;
  if (u.tools) {
    builtin_names = u.tools->builtin_names;
    client_tools = u.tools->client_tools;
  }
  for (const auto& [k, v] : raw.items()) settings[k] = v;
}

SessionDirectory::SessionDirectory(std::filesystem::path dir, std::chrono::milliseconds grace)
    : dir_(std::move(dir)), grace_(grace) {
  if (dir_.empty()) dir_ = std::filesystem::temp_directory_path() / "agentrt-sessions";
}

std::shared_ptr<SessionState> SessionDirectory::create(const AgentOptions& defaults) {
  auto s = std::make_shared<SessionState>();
  s->id = new_session_id();
  s->options = defaults;
  s->transcript = dir_ / (s->id + ".jsonl");
  s->attached = true;
  std::lock_guard lock(mutex_);
  sessions_[s->id] = s;
  return s;
}

std::shared_ptr<SessionState> SessionDirectory::find(const std::string& id,
                                                     const AgentOptions& defaults,
                                                     const tools::ToolRegistry& builtins) {
  if (!valid_session_id(id)) return nullptr;
  std::lock_guard lock(mutex_);
  expire_locked();
  if (auto it = sessions_.find(id); it != sessions_.end()) return it->second;
  // Not in memory: a session checkpointed by an earlier server run.
  auto s = std::make_shared<SessionState>();
  s->id = id;
  s->options = defaults;
  s->transcript = dir_ / (id + ".jsonl");
  const auto cp = checkpoint_path(*s);
  if (!std::filesystem::exists(cp)) return nullptr;
  std::ifstream in(cp);
  const auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return nullptr;
  s->apply_locked(parse_session_update(j.value("settings", nlohmann::json::object())),
                  j.value("settings", nlohmann::json::object()), builtins);
  for (const auto& u : j.value("pending_user", nlohmann::json::array()))
    if (u.is_string()) s->pending_user.push_back(u.get<std::string>());
  sessions_[id] = s;
  return s;
}

size_t SessionDirectory::size() {
  std::lock_guard lock(mutex_);
  expire_locked();
  return sessions_.size();
}

void SessionDirectory::expire_locked() {
  const auto now = std::chrono::steady_clock::now();
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    std::unique_lock l(it->second->mutex, std::try_to_lock);
    const bool expired = l.owns_lock() && !it->second->attached && !it->second->turn_active &&
                         now - it->second->detached_at > grace_;
    it = expired ? sessions_.erase(it) : std::next(it);
  }
}

void SessionDirectory::cancel_all(const std::string& why) {
  std::lock_guard lock(mutex_);
  for (auto& [id, s] : sessions_) {
    std::lock_guard l(s->mutex);
    s->cancel_turn_locked(why);
  }
}

void SessionDirectory::checkpoint(SessionState& s) {
  std::filesystem::create_directories(s.transcript.parent_path());
  const auto path = checkpoint_path(s);
  const auto tmp = std::filesystem::path(path.string() + ".tmp");
  {
    std::ofstream out(tmp);
    if (!out) throw std::runtime_error("cannot write session checkpoint " + tmp.string());
    out << nlohmann::json{{"id", s.id}, {"settings", s.settings}, {"pending_user", s.pending_user}}
               .dump();
  }
  std::filesystem::rename(tmp, path);  // a crash never leaves half a checkpoint
}

void SessionDirectory::checkpoint_all() {
  std::lock_guard lock(mutex_);
  for (auto& [id, s] : sessions_) {
    std::lock_guard l(s->mutex);
    checkpoint(*s);
  }
}

}  // namespace agentrt::server
