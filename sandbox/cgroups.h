// Per-run cgroups for memory, pids and cpu limits, on cgroup v1 (one hierarchy per
// controller, as these machines mount them) or v2 (unified). Each controller that cannot be
// set up is reported inactive with the reason; the group is removed on destruction.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace agentrt::sandbox {

struct CgroupLimits {
  uint64_t memory_bytes = 0;
  int max_processes = 0;
  double cpus = 1.0;  // cpu quota in cores
};

class RunCgroup {
 public:
  RunCgroup(const std::string& name, const CgroupLimits& limits);
  ~RunCgroup();
  RunCgroup(const RunCgroup&) = delete;
  RunCgroup& operator=(const RunCgroup&) = delete;

  void add(pid_t pid);  // before the process starts the command
  void kill_all();      // SIGKILL everything still in the group
  bool memory_active() const { return !memory_dir_.empty(); }
  bool pids_active() const { return !pids_dir_.empty(); }
  bool cpu_active() const { return !cpu_dir_.empty(); }
  const std::string& why_inactive() const { return why_; }
  uint64_t peak_memory() const;
  bool memory_limit_hit() const;
  bool pids_limit_hit() const;

 private:
  std::filesystem::path memory_dir_, pids_dir_, cpu_dir_;
  std::vector<std::filesystem::path> created_;
  bool v2_ = false;
  std::string why_;
};

}  // namespace agentrt::sandbox
