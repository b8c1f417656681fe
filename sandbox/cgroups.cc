#include "sandbox/cgroups.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

namespace agentrt::sandbox {

namespace {

namespace fs = std::filesystem;

bool write_file(const fs::path& file, const std::string& value) {
  std::ofstream out(file);
  if (!out) return false;
  out << value;
  out.flush();
  return static_cast<bool>(out);
}

std::string read_file(const fs::path& file) {
  std::ifstream in(file);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A child group under `parent`/agentrt, or empty if it cannot be made writable.
fs::path make_group(const fs::path& parent, const std::string& name,
                    std::vector<fs::path>& created) {
  std::error_code ec;
  if (!fs::exists(parent / "cgroup.procs", ec)) return {};
  const fs::path base = parent / "agentrt";
  fs::create_directory(base, ec);
  const fs::path dir = base / name;
  if (!fs::create_directory(dir, ec) || ec) return {};
  created.push_back(dir);
  return dir;
}

uint64_t read_number(const fs::path& file) {
  try {
    return std::stoull(read_file(file));
  } catch (...) {
    return 0;
  }
}

uint64_t read_key(const fs::path& file, const std::string& key) {
  std::istringstream in(read_file(file));
  std::string k;
  uint64_t v;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return 0;
}

}  // namespace

RunCgroup::RunCgroup(const std::string& name, const CgroupLimits& limits) {
  const fs::path root = "/sys/fs/cgroup";
  std::error_code ec;
  if (fs::exists(root / "cgroup.controllers", ec)) {
    v2_ = true;
    const fs::path dir = make_group(root, name, created_);
    if (dir.empty()) {
      why_ = "cgroup v2 hierarchy not writable";
      return;
    }
    write_file(root / "agentrt" / "cgroup.subtree_control", "+memory +pids +cpu");
    if (limits.memory_bytes &&
        write_file(dir / "memory.max", std::to_string(limits.memory_bytes))) {
      write_file(dir / "memory.swap.max", "0");
      memory_dir_ = dir;
    }
    if (limits.max_processes && write_file(dir / "pids.max", std::to_string(limits.max_processes)))
      pids_dir_ = dir;
    if (write_file(dir / "cpu.max",
                   std::to_string(static_cast<int>(limits.cpus * 100000)) + " 100000"))
      cpu_dir_ = dir;
    if (!memory_dir_.empty() || !pids_dir_.empty()) return;
    why_ = "cgroup v2 controllers not delegated";
    return;
  }
  // cgroup v1: one hierarchy per controller.
  if (limits.memory_bytes) {
    const fs::path dir = make_group(root / "memory", name, created_);
    if (!dir.empty() &&
        write_file(dir / "memory.limit_in_bytes", std::to_string(limits.memory_bytes))) {
      write_file(dir / "memory.memsw.limit_in_bytes", std::to_string(limits.memory_bytes));
      memory_dir_ = dir;
    }
  }
  if (limits.max_processes) {
    const fs::path dir = make_group(root / "pids", name, created_);
    if (!dir.empty() && write_file(dir / "pids.max", std::to_string(limits.max_processes)))
      pids_dir_ = dir;
  }
  {
    fs::path cpu_root = root / "cpu";
    if (!fs::exists(cpu_root, ec)) cpu_root = root / "cpu,cpuacct";
    const fs::path dir = make_group(cpu_root, name, created_);
    if (!dir.empty() && write_file(dir / "cpu.cfs_period_us", "100000") &&
        write_file(dir / "cpu.cfs_quota_us",
                   std::to_string(static_cast<int>(limits.cpus * 100000)))) {
      cpu_dir_ = dir;
    }
  }
  if (memory_dir_.empty() && pids_dir_.empty())
    why_ = "no writable cgroup v1 memory/pids hierarchy";
}

RunCgroup::~RunCgroup() {
  kill_all();
  for (auto it = created_.rbegin(); it != created_.rend(); ++it) {
    for (int attempt = 0; attempt < 50; ++attempt) {
      if (::rmdir(it->c_str()) == 0 || errno == ENOENT) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
}

void RunCgroup::add(pid_t pid) {
  for (const auto& dir : created_) write_file(dir / "cgroup.procs", std::to_string(pid));
}

void RunCgroup::kill_all() {
  for (const auto& dir : created_) {
    if (v2_ && write_file(dir / "cgroup.kill", "1")) continue;
    std::istringstream in(read_file(dir / "cgroup.procs"));
    pid_t pid;
    while (in >> pid) ::kill(pid, SIGKILL);
  }
}

uint64_t RunCgroup::peak_memory() const {
  if (memory_dir_.empty()) return 0;
  return v2_ ? read_number(memory_dir_ / "memory.peak")
             : read_number(memory_dir_ / "memory.max_usage_in_bytes");
}

bool RunCgroup::memory_limit_hit() const {
  if (memory_dir_.empty()) return false;
  if (v2_)
    return read_key(memory_dir_ / "memory.events", "oom_kill") > 0 ||
           read_key(memory_dir_ / "memory.events", "max") > 0;
  return read_key(memory_dir_ / "memory.oom_control", "oom_kill") > 0 ||
         read_number(memory_dir_ / "memory.failcnt") > 0;
}

bool RunCgroup::pids_limit_hit() const {
  if (pids_dir_.empty()) return false;
  return read_key(pids_dir_ / "pids.events", "max") > 0;
}

}  // namespace agentrt::sandbox
