// Runs an untrusted command isolated, bounded and killable. Layers (each reported active or
// not): user, mount (pivot_root into a minimal root), pid (an init reaps; the tool is not
// pid 1), network (loopback only unless allowed), ipc and uts namespaces; no_new_privs; all
// capabilities dropped; a seccomp-bpf deny list; rlimits; cgroup (v1 or v2) memory, pids and
// cpu limits when a hierarchy is writable; a wall-clock timeout that kills the whole tree;
// output caps that are reported; an environment cleared to an allow-list.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace agentrt::sandbox {

enum class Layer {
  user_namespace,
  mount_namespace,
  pid_namespace,
  network_namespace,
  ipc_namespace,
  uts_namespace,
  no_new_privs,
  capabilities_dropped,
  seccomp,
  rlimits,
  cgroup_memory,
  cgroup_pids,
  cgroup_cpu,
};
std::string_view to_string(Layer layer);
Layer parse_layer(std::string_view name);  // throws naming the unknown layer
inline constexpr Layer kAllLayers[] = {
    Layer::user_namespace,    Layer::mount_namespace,      Layer::pid_namespace,
    Layer::network_namespace, Layer::ipc_namespace,        Layer::uts_namespace,
    Layer::no_new_privs,      Layer::capabilities_dropped, Layer::seccomp,
    Layer::rlimits,           Layer::cgroup_memory,        Layer::cgroup_pids,
    Layer::cgroup_cpu};

struct LayerStatus {
  Layer layer;
  bool active = false;
  std::string detail;
};

struct Bind {
  std::filesystem::path host;
  std::filesystem::path inside;
  bool writable = false;
};

struct Limits {
  double wall_seconds = 30;
  double cpu_seconds = 0;  // 0: none
  uint64_t memory_bytes = 512ull << 20;
  uint64_t file_size_bytes = 64ull << 20;
  int max_processes = 64;
  int max_open_files = 256;
  size_t stdout_cap = 1 << 20;
  size_t stderr_cap = 1 << 20;
};

struct SandboxConfig {
  std::vector<std::string> argv;
  std::filesystem::path workspace;  // bind-mounted read-write at workspace_inside (optional)
  std::string workspace_inside = "/workspace";
  std::string cwd;  // inside; default workspace_inside (or / without a workspace)
  std::vector<Bind> binds;
  bool network = false;
  Limits limits;
  // Added to the allow-listed environment (PATH, HOME, LANG, TERM); nothing else is inherited.
  std::vector<std::pair<std::string, std::string>> env;
  std::string stdin_data;
  std::vector<Layer> required_layers;  // run() refuses when one of these is unavailable
  bool passthrough_output = false;     // stream to our stdout/stderr instead of capturing
};

// Parses {"argv": [...], "workspace": "...", "limits": {...}, ...}; errors name the field.
SandboxConfig parse_config(const nlohmann::json& value);

enum class LimitHit { none, wall_timeout, cpu_time, memory, file_size, processes, output };
std::string_view to_string(LimitHit hit);

struct SandboxResult {
  int exit_code = -1;  // the command's exit code (when it exited)
  int signal = 0;      // the signal that ended it (when signalled)
  bool timed_out = false;
  LimitHit limit = LimitHit::none;
  std::string stdout_data, stderr_data;
  bool stdout_truncated = false, stderr_truncated = false;
  double duration_seconds = 0;
  uint64_t peak_memory_bytes = 0;
  std::vector<LayerStatus> layers;
  std::string message;  // why the sandbox ended it, if it did

  nlohmann::json to_json() const;
};

class SandboxError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What works on this machine (agentrt sandbox doctor). Cheap enough to call per run.
std::vector<LayerStatus> probe_layers();

// Thread-safe. Throws SandboxError for an invalid config or a required layer that is missing.
SandboxResult run(const SandboxConfig& config, const std::atomic<bool>* cancel = nullptr);

}  // namespace agentrt::sandbox
