#include <limits>
#include <stdexcept>

#include "sandbox/sandbox.h"

namespace agentrt::sandbox {

namespace {

constexpr std::pair<Layer, std::string_view> kLayerNames[] = {
    {Layer::user_namespace, "user_namespace"},
    {Layer::mount_namespace, "mount_namespace"},
    {Layer::pid_namespace, "pid_namespace"},
    {Layer::network_namespace, "network_namespace"},
    {Layer::ipc_namespace, "ipc_namespace"},
    {Layer::uts_namespace, "uts_namespace"},
    {Layer::no_new_privs, "no_new_privs"},
    {Layer::capabilities_dropped, "capabilities_dropped"},
    {Layer::seccomp, "seccomp"},
    {Layer::rlimits, "rlimits"},
    {Layer::cgroup_memory, "cgroup_memory"},
    {Layer::cgroup_pids, "cgroup_pids"},
    {Layer::cgroup_cpu, "cgroup_cpu"},
};

[[noreturn]] void bad(const std::string& field, const std::string& what) {
  throw SandboxError("sandbox config: " + field + ": " + what);
}

template <typename T>
T get(const nlohmann::json& j, const std::string& field) {
  try {
    return j.get<T>();
  } catch (const nlohmann::json::exception&) {
    bad(field, "wrong type");
  }
}

double non_negative(const nlohmann::json& j, const std::string& field) {
  if (!j.is_number()) bad(field, "expected a number");
  const double v = j.get<double>();
  if (!(v >= 0) || v > 1e12) bad(field, "must be a non-negative number");
  return v;
}

// Counts stored as int: 1e12 passes non_negative() but is past int's range.
int non_negative_int(const nlohmann::json& j, const std::string& field) {
  const double v = non_negative(j, field);
  if (v > std::numeric_limits<int>::max())
    bad(field, "must be at most " + std::to_string(std::numeric_limits<int>::max()));
  return static_cast<int>(v);
}

}  // namespace

std::string_view to_string(Layer layer) {
  for (const auto& [l, name] : kLayerNames) {
    if (l == layer) return name;
  }
  return "unknown";
}

Layer parse_layer(std::string_view name) {
  for (const auto& [l, n] : kLayerNames) {
    if (n == name) return l;
  }
  throw SandboxError("unknown sandbox layer '" + std::string(name) + "'");
}

std::string_view to_string(LimitHit hit) {
  switch (hit) {
    case LimitHit::none:
      return "none";
    case LimitHit::wall_timeout:
      return "wall_timeout";
    case LimitHit::cpu_time:
      return "cpu_time";
    case LimitHit::memory:
      return "memory";
    case LimitHit::file_size:
      return "file_size";
    case LimitHit::processes:
      return "processes";
    case LimitHit::output:
      return "output";
  }
  return "none";
}

SandboxConfig parse_config(const nlohmann::json& j) {
  if (!j.is_object()) bad("(root)", "expected an object");
  SandboxConfig c;
  for (const auto& [key, value] : j.items()) {
    if (key == "argv") {
      if (!value.is_array() || value.empty()) bad("argv", "expected a non-empty array of strings");
      for (size_t i = 0; i < value.size(); ++i) {
        if (!value[i].is_string()) bad("argv[" + std::to_string(i) + "]", "expected a string");
        c.argv.push_back(value[i].get<std::string>());
      }
    } else if (key == "workspace") {
      c.workspace = get<std::string>(value, key);
    } else if (key == "workspace_inside") {
      c.workspace_inside = get<std::string>(value, key);
      if (c.workspace_inside.empty() || c.workspace_inside[0] != '/')
        bad(key, "must be an absolute path");
    } else if (key == "cwd") {
      c.cwd = get<std::string>(value, key);
    } else if (key == "network") {
      c.network = get<bool>(value, key);
    } else if (key == "stdin") {
      c.stdin_data = get<std::string>(value, key);
    } else if (key == "env") {
      if (!value.is_object()) bad("env", "expected an object of strings");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) bad("env." + k, "expected a string");
        if (k.empty() || k.find('=') != std::string::npos) bad("env." + k, "invalid variable name");
        c.env.emplace_back(k, v.get<std::string>());
      }
    } else if (key == "binds") {
      if (!value.is_array()) bad("binds", "expected an array");
      for (size_t i = 0; i < value.size(); ++i) {
        const auto& b = value[i];
        const std::string f = "binds[" + std::to_string(i) + "]";
        if (!b.is_object() || !b.contains("host") || !b["host"].is_string())
          bad(f + ".host", "missing");
        Bind bind{b["host"].get<std::string>(), b.value("inside", b["host"].get<std::string>()),
                  b.value("writable", false)};
        if (!bind.inside.is_absolute()) bad(f + ".inside", "must be an absolute path");
        c.binds.push_back(bind);
      }
    } else if (key == "required_layers") {
      if (!value.is_array()) bad(key, "expected an array of layer names");
      for (const auto& l : value)
        c.required_layers.push_back(parse_layer(get<std::string>(l, key)));
    } else if (key == "limits") {
      if (!value.is_object()) bad("limits", "expected an object");
      for (const auto& [lk, lv] : value.items()) {
        const std::string f = "limits." + lk;
        if (lk == "wall_seconds")
          c.limits.wall_seconds = non_negative(lv, f);
        else if (lk == "cpu_seconds")
          c.limits.cpu_seconds = non_negative(lv, f);
        else if (lk == "memory_bytes")
          c.limits.memory_bytes = static_cast<uint64_t>(non_negative(lv, f));
        else if (lk == "file_size_bytes")
          c.limits.file_size_bytes = static_cast<uint64_t>(non_negative(lv, f));
        else if (lk == "max_processes")
          c.limits.max_processes = non_negative_int(lv, f);
        else if (lk == "max_open_files")
          c.limits.max_open_files = non_negative_int(lv, f);
        else if (lk == "stdout_cap")
          c.limits.stdout_cap = static_cast<size_t>(non_negative(lv, f));
        else if (lk == "stderr_cap")
          c.limits.stderr_cap = static_cast<size_t>(non_negative(lv, f));
        else
          bad(f, "unknown limit");
      }
    } else {
      bad(key, "unknown field");
    }
  }
  if (c.argv.empty()) bad("argv", "missing");
  return c;
}

nlohmann::json SandboxResult::to_json() const {
  nlohmann::json layers_json = nlohmann::json::object();
  for (const auto& l : layers) layers_json[std::string(to_string(l.layer))] = l.active;
  return {{"exit_code", exit_code},
          {"signal", signal},
          {"timed_out", timed_out},
          {"limit", std::string(to_string(limit))},
          {"stdout", stdout_data},
          {"stderr", stderr_data},
          {"stdout_truncated", stdout_truncated},
          {"stderr_truncated", stderr_truncated},
          {"duration_seconds", duration_seconds},
          {"peak_memory_bytes", peak_memory_bytes},
          {"message", message},
          {"layers", layers_json}};
}

}  // namespace agentrt::sandbox
