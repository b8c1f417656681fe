#include "runtime/workflow.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <iomanip>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

#include "tools/registry.h"

namespace agentrt {

namespace {

namespace fs = std::filesystem;

constexpr double kMaxSeconds = 7 * 24 * 3600;  // a week
constexpr double kMaxMb = 1 << 24;             // 16 TiB

class Reader {
 public:
  explicit Reader(fs::path file) : file_(std::move(file)) {}
  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw std::invalid_argument(file_.string() + ": " + path + ": " + what);
  }
  void only(const YAML::Node& node, const std::string& path, std::set<std::string> allowed) const {
    if (!node.IsMap()) fail(path, "expected a mapping");
    for (const auto& kv : node) {
      const std::string key = key_of(kv.first, path);
      if (!allowed.count(key)) fail(path.empty() ? key : path + "." + key, "unknown key");
    }
  }
  template <typename T>
  T get(const YAML::Node& node, const std::string& path) const {
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      fail(path, "wrong type");
    }
  }
  // Seconds and sizes that become integers: outside [lo, hi] (or NaN) the conversion would be
  // undefined or nonsensical.
  double in_range(const YAML::Node& node, const std::string& path, double lo, double hi) const {
    const double v = get<double>(node, path);
    if (!(v >= lo && v <= hi)) {
      std::ostringstream range;
      range << std::setprecision(15) << "must be a number from " << lo << " to " << hi;
      fail(path, range.str());
    }
    return v;
  }
  fs::path path_value(const YAML::Node& node, const std::string& path) const {
    fs::path p = get<std::string>(node, path);
    if (p.is_relative()) p = file_.parent_path() / p;
    return p.lexically_normal();
  }
  // YAML allows a mapping or a list as a key ("{a: 1}: x"); a workflow's keys are names.
  std::string key_of(const YAML::Node& key, const std::string& path) const {
    if (!key.IsScalar()) {
      fail(path.empty() ? "(top level)" : path,
           "line " + std::to_string(key.Mark().line + 1) + ": a key must be a plain string");
    }
    return key.Scalar();
  }
  nlohmann::json to_json(const YAML::Node& node, const std::string& path) const {
    switch (node.Type()) {
      case YAML::NodeType::Map: {
        nlohmann::json j = nlohmann::json::object();
        for (const auto& kv : node) {
          const std::string key = key_of(kv.first, path);
          j[key] = to_json(kv.second, path + "." + key);
        }
        return j;
      }
      case YAML::NodeType::Sequence: {
        nlohmann::json j = nlohmann::json::array();
        for (const auto& v : node)
          j.push_back(to_json(v, path + "[" + std::to_string(j.size()) + "]"));
        return j;
      }
      case YAML::NodeType::Scalar: {
        const std::string s = node.Scalar();
        if (node.Tag() == "!") return s;  // quoted
        if (s == "true") return true;
        if (s == "false") return false;
        if (s == "null" || s == "~") return nullptr;
        try {
          size_t used = 0;
          const long long i = std::stoll(s, &used);
          if (used == s.size()) return i;
          const double d = std::stod(s, &used);
          if (used == s.size()) return d;
        } catch (...) {
        }
        return s;
      }
      default:
        return nullptr;
    }
  }

 private:
  fs::path file_;
};

}  // namespace

Workflow parse_workflow(const std::string& text, const fs::path& file) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw std::invalid_argument(file.string() + ": invalid YAML: " + e.what());
  }
  Reader r(file);
  Workflow w;
  w.file = file;
  r.only(root, "",
         {"model", "system", "tools", "sandbox", "workspace", "limits", "sampling", "tool_choice",
          "parallel_tool_calls", "thinking", "steps", "output", "bounded_values"});
  if (const auto m = root["model"]) {
    r.only(
        m, "model",
        {"backend", "path", "device", "threads", "url", "name", "api_key_env", "guided_decoding"});
    if (m["backend"]) w.backend.kind = r.get<std::string>(m["backend"], "model.backend");
    if (w.backend.kind != "native" && w.backend.kind != "remote")
      r.fail("model.backend", "must be native or remote");
    if (m["path"]) w.backend.model_path = r.path_value(m["path"], "model.path");
    if (m["device"]) w.backend.device = r.get<std::string>(m["device"], "model.device");
    if (m["threads"]) w.backend.threads = r.get<int>(m["threads"], "model.threads");
    if (m["url"]) w.backend.url = r.get<std::string>(m["url"], "model.url");
    if (m["name"]) w.backend.model_name = r.get<std::string>(m["name"], "model.name");
    if (m["api_key_env"])
      w.backend.api_key_env = r.get<std::string>(m["api_key_env"], "model.api_key_env");
    if (m["guided_decoding"])
      w.backend.guided_decoding = r.get<std::string>(m["guided_decoding"], "model.guided_decoding");
    if (w.backend.kind == "native" && w.backend.model_path.empty())
      r.fail("model.path", "required for the native backend");
    if (w.backend.kind == "remote" && w.backend.url.empty())
      r.fail("model.url", "required for the remote backend");
  } else {
    r.fail("model", "missing");
  }
  if (root["system"]) w.options.system_prompt = r.get<std::string>(root["system"], "system");
  if (const auto t = root["tools"]) {
    r.only(t, "tools", {"builtin", "mcp", "network", "http_allow", "http_allow_private"});
    if (t["mcp"]) {
      if (!t["mcp"].IsSequence())
        r.fail("tools.mcp", "expected a list of {command: [...], prefix: NAME}");
      for (size_t i = 0; i < t["mcp"].size(); ++i) {
        const std::string path = "tools.mcp[" + std::to_string(i) + "]";
        r.only(t["mcp"][i], path, {"command", "prefix", "timeout"});
        tools::McpServerConfig server;
        if (!t["mcp"][i]["command"]) r.fail(path + ".command", "missing");
        server.command = r.get<std::vector<std::string>>(t["mcp"][i]["command"], path + ".command");
        if (server.command.empty()) r.fail(path + ".command", "empty");
        server.prefix = t["mcp"][i]["prefix"]
                            ? r.get<std::string>(t["mcp"][i]["prefix"], path + ".prefix")
                            : "mcp" + std::to_string(i);
        if (t["mcp"][i]["timeout"])
          server.call_timeout = std::chrono::milliseconds(static_cast<int64_t>(
              r.in_range(t["mcp"][i]["timeout"], path + ".timeout", 0, kMaxSeconds) * 1000));
        w.mcp_servers.push_back(std::move(server));
      }
    }
    if (t["builtin"]) {
      if (!t["builtin"].IsSequence()) r.fail("tools.builtin", "expected a list of tool names");
      const auto known = tools::builtin_tool_names();
      for (size_t i = 0; i < t["builtin"].size(); ++i) {
        const std::string name =
            r.get<std::string>(t["builtin"][i], "tools.builtin[" + std::to_string(i) + "]");
        if (std::find(known.begin(), known.end(), name) == known.end())
          r.fail("tools.builtin[" + std::to_string(i) + "]",
                 "unknown built-in tool '" + name + "'");
        w.builtin_tools.push_back(name);
      }
    }
    if (t["network"]) w.options.tool_context.network = r.get<bool>(t["network"], "tools.network");
    if (t["http_allow"])
      w.options.tool_context.http_allow_hosts =
          r.get<std::vector<std::string>>(t["http_allow"], "tools.http_allow");
    if (t["http_allow_private"])
      w.options.tool_context.http_allow_private =
          r.get<bool>(t["http_allow_private"], "tools.http_allow_private");
  }
  if (const auto s = root["sandbox"]) {
    r.only(s, "sandbox", {"timeout", "memory_mb", "cpu_seconds", "max_processes", "file_size_mb"});
    auto& l = w.options.tool_context.limits;
    if (s["timeout"]) {
      l.wall_seconds = r.in_range(s["timeout"], "sandbox.timeout", 0, kMaxSeconds);
      w.options.tool_context.timeout =
          std::chrono::milliseconds(static_cast<int64_t>(l.wall_seconds * 1000));
    }
    if (s["memory_mb"])
      l.memory_bytes = static_cast<uint64_t>(
          r.in_range(s["memory_mb"], "sandbox.memory_mb", 0, kMaxMb) * (1 << 20));
    if (s["cpu_seconds"])
      l.cpu_seconds = r.in_range(s["cpu_seconds"], "sandbox.cpu_seconds", 0, kMaxSeconds);
    if (s["max_processes"])
      l.max_processes = r.get<int>(s["max_processes"], "sandbox.max_processes");
    if (s["file_size_mb"])
      l.file_size_bytes = static_cast<uint64_t>(
          r.in_range(s["file_size_mb"], "sandbox.file_size_mb", 0, kMaxMb) * (1 << 20));
  }
  if (root["workspace"])
    w.options.tool_context.workspace = r.path_value(root["workspace"], "workspace");
  else
    w.options.tool_context.workspace = file.parent_path() / "workspace";
  if (const auto l = root["limits"]) {
    r.only(l, "limits",
           {"max_steps", "max_tokens", "max_seconds", "max_tokens_per_step",
            "max_identical_failures"});
    if (l["max_steps"]) w.options.limits.max_steps = r.get<int>(l["max_steps"], "limits.max_steps");
    if (l["max_tokens"])
      w.options.limits.max_total_tokens = r.get<int64_t>(l["max_tokens"], "limits.max_tokens");
    if (l["max_seconds"])
      w.options.limits.max_seconds = r.get<double>(l["max_seconds"], "limits.max_seconds");
    if (l["max_tokens_per_step"])
      w.options.max_tokens_per_step =
          r.get<int>(l["max_tokens_per_step"], "limits.max_tokens_per_step");
    if (l["max_identical_failures"])
      w.options.limits.max_identical_failures =
          r.get<int>(l["max_identical_failures"], "limits.max_identical_failures");
  }
  if (const auto s = root["sampling"]) {
    r.only(s, "sampling", {"temperature", "top_p", "top_k", "min_p", "seed"});
    if (s["temperature"])
      w.options.sampling.temperature = r.get<float>(s["temperature"], "sampling.temperature");
    if (s["top_p"]) w.options.sampling.top_p = r.get<float>(s["top_p"], "sampling.top_p");
    if (s["top_k"]) w.options.sampling.top_k = r.get<int>(s["top_k"], "sampling.top_k");
    if (s["min_p"]) w.options.sampling.min_p = r.get<float>(s["min_p"], "sampling.min_p");
    if (s["seed"]) w.options.sampling.seed = r.get<uint64_t>(s["seed"], "sampling.seed");
  }
  const auto tool_choice = [&](const YAML::Node& n, const std::string& path) {
    try {
      return ToolChoice::from_json(r.to_json(n, path));
    } catch (const std::exception& e) {
      r.fail(path, e.what());
    }
  };
  if (root["tool_choice"]) w.options.tool_choice = tool_choice(root["tool_choice"], "tool_choice");
  if (root["bounded_values"] && r.get<bool>(root["bounded_values"], "bounded_values")) {
    w.options.value_bounds = {48, 4, 1000000};
  }
  if (root["parallel_tool_calls"])
    w.options.parallel_tool_calls = r.get<bool>(root["parallel_tool_calls"], "parallel_tool_calls");
  if (root["thinking"]) {
    w.options.encoding.thinking = r.get<bool>(root["thinking"], "thinking")
                                      ? chat::ThinkingMode::thinking
                                      : chat::ThinkingMode::non_thinking;
  }
  const auto steps = root["steps"];
  if (!steps || !steps.IsSequence() || steps.size() == 0)
    r.fail("steps", "expected a non-empty list of steps");
  for (size_t i = 0; i < steps.size(); ++i) {
    const std::string path = "steps[" + std::to_string(i) + "]";
    WorkflowStep step;
    if (steps[i].IsScalar()) {
      step.prompt = steps[i].as<std::string>();
    } else {
      r.only(steps[i], path, {"prompt", "response_format", "tool_choice"});
      if (!steps[i]["prompt"]) r.fail(path + ".prompt", "missing");
      step.prompt = r.get<std::string>(steps[i]["prompt"], path + ".prompt");
      if (steps[i]["response_format"])
        step.response_format = r.to_json(steps[i]["response_format"], path + ".response_format");
      if (steps[i]["tool_choice"])
        step.tool_choice = tool_choice(steps[i]["tool_choice"], path + ".tool_choice");
    }
    for (const auto& ref : std::vector<std::string>{}) (void)ref;
    try {
      std::vector<std::string> placeholders(i, "");
      expand_step_prompt(step.prompt, placeholders);
    } catch (const std::exception& e) {
      r.fail(path + ".prompt", e.what());
    }
    w.steps.push_back(std::move(step));
  }
  if (const auto o = root["output"]) {
    r.only(o, "output", {"final", "transcript"});
    if (o["final"]) w.final_output = r.path_value(o["final"], "output.final");
    if (o["transcript"]) w.transcript = r.path_value(o["transcript"], "output.transcript");
  }
  return w;
}

Workflow load_workflow(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw std::invalid_argument(file.string() + ": cannot open workflow file");
  std::stringstream s;
  s << in.rdbuf();
  return parse_workflow(s.str(), fs::absolute(file));
}

std::string expand_step_prompt(const std::string& prompt, const std::vector<std::string>& outputs) {
  static const std::regex ref(R"(\{\{\s*steps\.(\d+)\.output\s*\}\})");
  std::string out;
  auto begin = std::sregex_iterator(prompt.begin(), prompt.end(), ref);
  size_t last = 0;
  for (auto it = begin; it != std::sregex_iterator(); ++it) {
    const size_t index = std::stoul((*it)[1]);
    if (index >= outputs.size())
      throw std::invalid_argument("{{steps." + std::to_string(index) +
                                  ".output}} refers to a step that has not run yet");
    out += prompt.substr(last, it->position() - last) + outputs[index];
    last = it->position() + it->length();
  }
  return out + prompt.substr(last);
}

WorkflowResult run_workflow(const Workflow& w, std::shared_ptr<Backend> backend,
                            const std::function<void(int, const AgentEvent&)>& on_event) {
  auto registry = std::make_shared<tools::ToolRegistry>();
  if (!w.builtin_tools.empty()) tools::register_builtin_tools(*registry, w.builtin_tools);
  std::vector<std::shared_ptr<tools::McpClient>> mcp;  // alive for the whole run
  for (const auto& server : w.mcp_servers)
    mcp.push_back(tools::register_mcp_tools(*registry, server));
  fs::create_directories(w.options.tool_context.workspace);
  Agent agent(std::move(backend), registry, w.options);
  auto session = agent.new_session(w.transcript);
  WorkflowResult result;
  std::vector<std::string> outputs;
  for (size_t i = 0; i < w.steps.size(); ++i) {
    TurnOptions turn;
    turn.response_format = w.steps[i].response_format;
    turn.tool_choice = w.steps[i].tool_choice;
    const std::string prompt = expand_step_prompt(w.steps[i].prompt, outputs);
    TurnResult r = session->send(
        prompt,
        [&](const AgentEvent& e) {
          if (on_event) on_event(static_cast<int>(i), e);
        },
        turn);
    outputs.push_back(r.structured ? r.structured->dump() : r.final_text);
    result.ok = result.ok && r.stop == StopReason::final_answer;
    result.steps.push_back(std::move(r));
  }
  if (w.final_output) {
    if (w.final_output->has_parent_path()) fs::create_directories(w.final_output->parent_path());
    std::ofstream(*w.final_output) << (outputs.empty() ? "" : outputs.back());
  }
  return result;
}

}  // namespace agentrt
