// run(): clone the sandbox init into new namespaces, map its ids, put it in the run's cgroups,
// then pump stdin/stdout/stderr with caps while watching the wall clock and the cancel flag.
// The init builds the minimal root, forks the command (so the command is not pid 1), reaps
// every orphan and reports the command's wait status; killing the init kills the whole pid
// namespace, double-forked daemons included.
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <thread>

#include "sandbox/cgroups.h"
#include "sandbox/minimal_root.h"
#include "sandbox/sandbox.h"
#include "sandbox/seccomp_policy.h"

namespace agentrt::sandbox {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uid_t kInsideUid = 1000;
constexpr gid_t kInsideGid = 1000;

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset();
    fd = std::exchange(o.fd, -1);
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

struct Pipe {
  Fd read, write;
};
Pipe make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    throw SandboxError(std::string("pipe: ") + std::strerror(errno));
  return {Fd(fds[0]), Fd(fds[1])};
}

// Everything the init needs, prepared before clone (no allocation-heavy work after it).
struct InitArgs {
  const SandboxConfig* config;
  std::string staging;
  int stdin_fd, stdout_fd, stderr_fd;
  int sync_fd;    // parent writes one byte once ids are mapped and cgroups joined
  int status_fd;  // init writes the command's wait status, or a setup error message
  bool userns, netns, memory_cgroup;
  std::vector<std::string> env;
  const std::vector<sock_filter>* seccomp = nullptr;
};

[[noreturn]] void init_fail(const InitArgs& a, const std::string& what) {
  const std::string msg = "E" + what;
  (void)!::write(a.status_fd, msg.data(), msg.size());
  ::_exit(127);
}

void loopback_up() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return;
  struct ifreq ifr {};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    ::ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  ::close(s);
}

void set_limit(int resource, rlim_t value) {
  struct rlimit r {
    value, value
  };
  ::setrlimit(resource, &r);
}

// The command's side: limits, privileges, seccomp, exec. Never returns.
[[noreturn]] void exec_command(const InitArgs& a) {
  const SandboxConfig& c = *a.config;
  ::dup2(a.stdin_fd, 0);
  ::dup2(a.stdout_fd, 1);
  ::dup2(a.stderr_fd, 2);
  ::setsid();
  if (c.limits.cpu_seconds > 0) {
    // SIGXCPU at the soft limit (reportable), SIGKILL a second later if it is ignored.
    const rlim_t soft = static_cast<rlim_t>(std::ceil(c.limits.cpu_seconds));
    struct rlimit r {
      soft, soft + 1
    };
    ::setrlimit(RLIMIT_CPU, &r);
  }
  // With a memory cgroup the kernel's OOM killer enforces the limit and we can report it;
  // RLIMIT_AS is the fallback (allocation failures, not reportable as a limit).
  if (c.limits.memory_bytes && !a.memory_cgroup)
    set_limit(RLIMIT_AS, c.limits.memory_bytes + (64ull << 20));
  if (c.limits.file_size_bytes) set_limit(RLIMIT_FSIZE, c.limits.file_size_bytes);
  if (c.limits.max_open_files) set_limit(RLIMIT_NOFILE, c.limits.max_open_files);
  if (c.limits.max_processes) set_limit(RLIMIT_NPROC, c.limits.max_processes);
  set_limit(RLIMIT_CORE, 0);
  std::string cwd = c.cwd.empty() ? (c.workspace.empty() ? "/" : c.workspace_inside) : c.cwd;
  if (::chdir(cwd.c_str()) != 0) {
    dprintf(2, "sandbox: cannot enter working directory %s: %s\n", cwd.c_str(),
            std::strerror(errno));
    ::_exit(126);
  }
  // All capabilities dropped: bounding set, ambient, then the sets themselves.
  for (int cap = 0; cap <= 63; ++cap) ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
  ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  if (!a.userns) {
    // Without a user namespace we are real root: drop to an unprivileged id.
    ::setgroups(0, nullptr);
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      dprintf(2, "sandbox: cannot drop privileges: %s\n", std::strerror(errno));
      ::_exit(126);
    }
  }
  struct __user_cap_header_struct hdr {
    _LINUX_CAPABILITY_VERSION_3, 0
  };
  struct __user_cap_data_struct data[2]{};
  ::syscall(SYS_capset, &hdr, data);
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  if (!install_seccomp_program(*a.seccomp)) {
    dprintf(2, "sandbox: loading the seccomp filter failed: %s\n", std::strerror(errno));
    ::_exit(126);
  }
  std::vector<char*> argv, envp;
  for (const auto& s : c.argv) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  for (const auto& s : a.env) envp.push_back(const_cast<char*>(s.c_str()));
  envp.push_back(nullptr);
  ::execvpe(argv[0], argv.data(), envp.data());
  dprintf(2, "sandbox: cannot run %s: %s\n", argv[0], std::strerror(errno));
  ::_exit(127);
}

// Closes every descriptor from `first` up except those in `keep`: close_range over the gaps
// (a few syscalls, and no upper bound a busy host process could exceed), one close per fd
// where the kernel lacks close_range.
void close_all_but(int first, std::array<int, 5> keep) {
  std::sort(keep.begin(), keep.end());
  unsigned lo = static_cast<unsigned>(first);
  const auto close_span = [](unsigned from, unsigned to) {
    if (from > to) return;
    if (::syscall(SYS_close_range, from, to, 0) == 0) return;
    for (unsigned fd = from; fd <= std::min(to, 65535u); ++fd) ::close(static_cast<int>(fd));
  };
  for (int fd : keep) {
    if (fd < first) continue;
    if (static_cast<unsigned>(fd) > lo) close_span(lo, static_cast<unsigned>(fd) - 1);
    lo = std::max(lo, static_cast<unsigned>(fd) + 1);
  }
  close_span(lo, ~0u);
}

[[noreturn]] void init_main(const InitArgs& a) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The parent's other descriptors (notably our end of the stdin pipe) must not stay open
  // here, or the command would never see end-of-file.
  close_all_but(3, {a.stdin_fd, a.stdout_fd, a.stderr_fd, a.sync_fd, a.status_fd});
  ::sethostname("sandbox", 7);
  if (!a.config->network) loopback_up();
  if (const std::string e = build_minimal_root(*a.config, a.staging, true); !e.empty())
    init_fail(a, e);
  if (a.userns && (::setresgid(kInsideGid, kInsideGid, kInsideGid) != 0 ||
                   ::setresuid(kInsideUid, kInsideUid, kInsideUid) != 0)) {
    init_fail(a, std::string("setresuid: ") + std::strerror(errno));
  }
  // vfork: no page-table copy of a large caller. Safe here: the init is single-threaded and
  // suspended until the exec, and the child only touches per-process state (rlimits, creds,
  // cwd, seccomp); what it allocates is merely left in the init's heap.
  const pid_t child = ::vfork();
  if (child < 0) init_fail(a, std::string("fork: ") + std::strerror(errno));
  if (child == 0) exec_command(a);
  // Reap everything; report the command's status once it ends.
  int command_status = 0;
  for (;;) {
    int status = 0;
    const pid_t p = ::waitpid(-1, &status, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p == child) {
      command_status = status;
      break;
    }
  }
  const std::string msg = "S" + std::to_string(command_status);
  (void)!::write(a.status_fd, msg.data(), msg.size());
  ::_exit(0);  // the pid namespace dies with its init: leftover processes are killed
}

// Forked, not cloned: fork() leaves malloc and stdio locks usable in the child of a
// multithreaded caller, which raw clone() does not (parallel runs deadlocked in the init).
// This process unshares the namespaces, reports on `ready_fd` whether the user namespace
// took, waits for the parent's go (ids mapped, cgroups joined), then forks the init, which
// is pid 1 of the new pid namespace.
[[noreturn]] void namespace_parent_main(InitArgs& a, int flags, int ready_fd) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  bool userns = (flags & CLONE_NEWUSER) != 0;
  if (::unshare(flags) != 0) {
    const int e = errno;
    if (!userns || ::geteuid() != 0 || ::unshare(flags & ~CLONE_NEWUSER) != 0) {
      dprintf(ready_fd, "x%d", e);
      ::_exit(127);
    }
    userns = false;
  }
  a.userns = userns;
  (void)!::write(ready_fd, userns ? "u" : "r", 1);
  ::close(ready_fd);
  char go = 0;
  if (::read(a.sync_fd, &go, 1) != 1 || go != 'G') ::_exit(127);
  const pid_t init = ::fork();
  if (init < 0) init_fail(a, std::string("fork: ") + std::strerror(errno));
  if (init == 0) init_main(a);
  // Hold no pipe ends: the parent sees end-of-file when the init is gone.
  ::syscall(SYS_close_range, 0u, ~0u, 0);
  int status = 0;
  while (::waitpid(init, &status, 0) < 0 && errno == EINTR) {
  }
  ::_exit(0);
}

std::vector<std::string> make_env(const SandboxConfig& c) {
  std::vector<std::string> env = {
      "PATH=/usr/local/bin:/usr/bin:/bin",
      "HOME=" + (c.workspace.empty() ? std::string("/tmp") : c.workspace_inside), "LANG=C.UTF-8",
      "TERM=dumb", "USER=sandbox"};
  for (const auto& [k, v] : c.env) env.push_back(k + "=" + v);
  return env;
}

bool write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.flush();
  return static_cast<bool>(out);
}

bool userns_usable() {
  // Child in a new user namespace: exits 0 if that worked.
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(::unshare(CLONE_NEWUSER) == 0 ? 0 : 1);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

bool unshare_usable(int flags) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(::unshare(flags) == 0 ? 0 : 1);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string unique_name() {
  std::random_device rd;
  return std::to_string(::getpid()) + "-" + std::to_string(rd()) + std::to_string(rd());
}

}  // namespace

std::vector<LayerStatus> probe_layers() {
  std::vector<LayerStatus> out;
  const bool userns = userns_usable();
  const bool root = ::geteuid() == 0;
  const int base = userns ? CLONE_NEWUSER : 0;
  const auto ns = [&](Layer l, int flag, const char* name) {
    const bool ok = (userns || root) && unshare_usable(base | flag);
    out.push_back(
        {l, ok,
         ok ? std::string(name) + " namespace available" : std::string("cannot unshare ") + name});
  };
  out.push_back({Layer::user_namespace, userns,
                 userns ? "unprivileged user namespaces work" : "unshare(CLONE_NEWUSER) refused"});
  ns(Layer::mount_namespace, CLONE_NEWNS, "mount");
  ns(Layer::pid_namespace, CLONE_NEWPID, "pid");
  ns(Layer::network_namespace, CLONE_NEWNET, "network");
  ns(Layer::ipc_namespace, CLONE_NEWIPC, "ipc");
  ns(Layer::uts_namespace, CLONE_NEWUTS, "uts");
  out.push_back({Layer::no_new_privs, true, "prctl(PR_SET_NO_NEW_PRIVS)"});
  out.push_back(
      {Layer::capabilities_dropped, true, "bounding, ambient and effective sets cleared"});
  {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
      ::_exit(install_seccomp_policy().empty() ? 0 : 1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    out.push_back({Layer::seccomp, ok, ok ? "libseccomp filter loads" : "seccomp filter refused"});
  }
  out.push_back({Layer::rlimits, true, "setrlimit"});
  RunCgroup probe("probe-" + unique_name(), {1ull << 30, 64, 1.0});
  out.push_back({Layer::cgroup_memory, probe.memory_active(),
                 probe.memory_active() ? "writable memory cgroup" : probe.why_inactive()});
  out.push_back({Layer::cgroup_pids, probe.pids_active(),
                 probe.pids_active() ? "writable pids cgroup" : probe.why_inactive()});
  out.push_back({Layer::cgroup_cpu, probe.cpu_active(),
                 probe.cpu_active() ? "writable cpu cgroup" : "no writable cpu cgroup"});
  return out;
}

SandboxResult run(const SandboxConfig& config, const std::atomic<bool>* cancel) {
  if (config.argv.empty()) throw SandboxError("sandbox: empty command");
  std::error_code ec;
  if (!config.workspace.empty() && !fs::is_directory(config.workspace, ec)) {
    throw SandboxError("sandbox: workspace '" + config.workspace.string() + "' is not a directory");
  }
  for (const auto& b : config.binds) {
    if (!fs::exists(b.host, ec))
      throw SandboxError("sandbox: bind source '" + b.host.string() + "' does not exist");
  }
  SandboxResult result;
  const auto start = Clock::now();
  const bool root = ::geteuid() == 0;
  // As root a user namespace is tried first and dropped only if the kernel refuses it; an
  // unprivileged caller needs one. (No probe fork: it would cost a process per run.)
  bool userns = true;
  const bool namespaces = true;

  const std::string name = unique_name();
  CgroupLimits cg_limits{config.limits.memory_bytes, config.limits.max_processes, 1.0};
  RunCgroup cgroup(name, cg_limits);

  // Layer report for this run.
  for (Layer l : kAllLayers) {
    LayerStatus s{l, false, ""};
    switch (l) {
      case Layer::user_namespace:
        s.active = userns;
        s.detail = userns ? "uid 1000 inside" : "unavailable";
        break;
      case Layer::mount_namespace:
      case Layer::pid_namespace:
      case Layer::ipc_namespace:
      case Layer::uts_namespace:
        s.active = namespaces;
        break;
      case Layer::network_namespace:
        s.active = namespaces && !config.network;
        s.detail = config.network ? "network allowed for this run" : "loopback only";
        break;
      case Layer::no_new_privs:
      case Layer::capabilities_dropped:
      case Layer::seccomp:
      case Layer::rlimits:
        s.active = true;
        break;
      case Layer::cgroup_memory:
        s.active = cgroup.memory_active();
        s.detail = s.active ? "" : cgroup.why_inactive();
        break;
      case Layer::cgroup_pids:
        s.active = cgroup.pids_active();
        s.detail = s.active ? "" : cgroup.why_inactive();
        break;
      case Layer::cgroup_cpu:
        s.active = cgroup.cpu_active();
        break;
    }
    result.layers.push_back(s);
  }
  for (Layer required : config.required_layers) {
    for (const auto& s : result.layers) {
      if (s.layer == required && !s.active) {
        throw SandboxError("sandbox: required layer " + std::string(to_string(required)) +
                           " is unavailable here (" + s.detail + ")");
      }
    }
  }
  if (!namespaces)
    throw SandboxError(
        "sandbox: neither user namespaces nor root: cannot isolate (run agentrt sandbox doctor)");

  const fs::path staging = fs::temp_directory_path() / ("agentrt-root-" + name);
  fs::create_directories(staging);
  struct StagingCleanup {
    fs::path p;
    ~StagingCleanup() {
      std::error_code e;
      fs::remove(p, e);
    }
  } staging_cleanup{staging};

  Pipe in = make_pipe(), out = make_pipe(), err = make_pipe(), sync = make_pipe(),
       status = make_pipe();
  InitArgs args{&config,
                staging.string(),
                in.read.fd,
                config.passthrough_output ? 1 : out.write.fd,
                config.passthrough_output ? 2 : err.write.fd,
                sync.read.fd,
                status.write.fd,
                userns,
                !config.network,
                cgroup.memory_active(),
                make_env(config)};
  // The child must not inherit the ends it does not use; CLOEXEC covers exec, and the init
  // only uses the fds named above.
  int flags = SIGCHLD | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
  if (userns) flags |= CLONE_NEWUSER;
  if (!config.network) flags |= CLONE_NEWNET;
  std::vector<sock_filter> seccomp;
  try {
    seccomp = compile_seccomp_policy();
  } catch (const std::exception& e) {
    throw SandboxError(std::string("sandbox: ") + e.what());
  }
  args.seccomp = &seccomp;
  Pipe ready = make_pipe();
  const pid_t init = ::fork();
  if (init < 0) throw SandboxError(std::string("sandbox: fork: ") + std::strerror(errno));
  if (init == 0) namespace_parent_main(args, flags & ~SIGCHLD, ready.write.fd);
  ready.write.reset();
  char ready_text[32] = {};
  ssize_t ready_len;
  while ((ready_len = ::read(ready.read.fd, ready_text, sizeof ready_text - 1)) < 0 &&
         errno == EINTR) {
  }
  if (ready_len <= 0 || ready_text[0] == 'x') {
    ::kill(init, SIGKILL);
    ::waitpid(init, nullptr, 0);
    const int e = ready_len > 0 ? std::atoi(ready_text + 1) : 0;
    throw SandboxError(std::string("sandbox: unshare of the namespaces failed: ") +
                       (e ? std::strerror(e) : "setup process died"));
  }
  userns = args.userns = ready_text[0] == 'u';
  for (auto& l : result.layers) {
    if (l.layer == Layer::user_namespace) {
      l.active = userns;
      l.detail = userns ? "uid 1000 inside"
                        : "refused by the kernel; running as root dropping to uid 65534";
    }
  }
  in.read.reset();
  out.write.reset();
  err.write.reset();
  sync.read.reset();
  status.write.reset();

  if (userns) {
    struct stat st {};
    uid_t map_uid = ::geteuid();
    gid_t map_gid = ::getegid();
    if (root && !config.workspace.empty() && ::stat(config.workspace.c_str(), &st) == 0) {
      // As root, the command acts as the workspace's owner on the workspace (documented).
      map_uid = st.st_uid;
      map_gid = st.st_gid;
    }
    const std::string proc = "/proc/" + std::to_string(init);
    write_text(proc + "/setgroups", "deny");
    const bool mapped = write_text(proc + "/uid_map", std::to_string(kInsideUid) + " " +
                                                          std::to_string(map_uid) + " 1\n") &&
                        write_text(proc + "/gid_map", std::to_string(kInsideGid) + " " +
                                                          std::to_string(map_gid) + " 1\n");
    if (!mapped) {
      ::kill(init, SIGKILL);
      ::waitpid(init, nullptr, 0);
      throw SandboxError("sandbox: cannot write uid/gid maps for the user namespace");
    }
  }
  cgroup.add(init);
  (void)!::write(sync.write.fd, "G", 1);
  sync.write.reset();

  // Pump: stdin in, stdout/stderr out with caps; watch the clock and the cancel flag.
  size_t stdin_off = 0;
  if (config.stdin_data.empty())
    in.write.reset();
  else
    ::fcntl(in.write.fd, F_SETFL, O_NONBLOCK);
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                  config.limits.wall_seconds > 0 ? config.limits.wall_seconds : 1e9));
  std::string status_text;
  bool killed = false;
  size_t out_total = 0, err_total = 0;
  const auto kill_all = [&](LimitHit why, const std::string& message) {
    if (killed) return;
    killed = true;
    if (result.limit == LimitHit::none) result.limit = why;
    result.message = message;
    ::kill(init, SIGKILL);
    cgroup.kill_all();
  };
  for (;;) {
    std::array<pollfd, 4> fds{};
    int n = 0;
    const auto add = [&](int fd, short ev) {
      if (fd >= 0) fds[n++] = {fd, ev, 0};
    };
    add(out.read.fd, POLLIN);
    add(err.read.fd, POLLIN);
    add(status.read.fd, POLLIN);
    add(in.write.fd, POLLOUT);
    if (n == 0) break;
    const int ready = ::poll(fds.data(), n, 20);
    if (ready < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      if (!fds[i].revents) continue;
      const int fd = fds[i].fd;
      if (fd == in.write.fd) {
        const ssize_t w =
            ::write(fd, config.stdin_data.data() + stdin_off, config.stdin_data.size() - stdin_off);
        if (w > 0) stdin_off += static_cast<size_t>(w);
        if (w < 0 && errno != EAGAIN) in.write.reset();
        if (stdin_off >= config.stdin_data.size()) in.write.reset();
        continue;
      }
      char buf[65536];
      const ssize_t r = ::read(fd, buf, sizeof buf);
      if (r <= 0) {
        if (fd == out.read.fd)
          out.read.reset();
        else if (fd == err.read.fd)
          err.read.reset();
        else
          status.read.reset();
        continue;
      }
      if (fd == status.read.fd) {
        status_text.append(buf, r);
        continue;
      }
      const bool is_out = fd == out.read.fd;
      std::string& dest = is_out ? result.stdout_data : result.stderr_data;
      const size_t cap = is_out ? config.limits.stdout_cap : config.limits.stderr_cap;
      size_t& total = is_out ? out_total : err_total;
      total += static_cast<size_t>(r);
      if (dest.size() < cap) dest.append(buf, std::min<size_t>(r, cap - dest.size()));
      if (total > cap) {
        (is_out ? result.stdout_truncated : result.stderr_truncated) = true;
        // Keep draining a while (the command may finish); a flood far past the cap is ended.
        if (total > cap * 8 + (1 << 20))
          kill_all(LimitHit::output, "output exceeded its cap; command killed");
      }
    }
    if (cancel && cancel->load()) kill_all(LimitHit::none, "cancelled");
    if (Clock::now() > deadline && !killed) {
      result.timed_out = true;
      kill_all(LimitHit::wall_timeout, "wall-clock timeout after " +
                                           std::to_string(config.limits.wall_seconds) +
                                           " s; process tree killed");
    }
  }
  struct rusage usage {};
  int init_status = 0;
  while (::wait4(init, &init_status, 0, &usage) < 0 && errno == EINTR) {
  }
  result.duration_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.peak_memory_bytes = cgroup.peak_memory();
  if (!result.peak_memory_bytes)
    result.peak_memory_bytes = static_cast<uint64_t>(usage.ru_maxrss) * 1024;

  if (!status_text.empty() && status_text[0] == 'E') {
    throw SandboxError("sandbox setup failed: " + status_text.substr(1));
  }
  if (!status_text.empty() && status_text[0] == 'S') {
    const int ws = std::stoi(status_text.substr(1));
    if (WIFEXITED(ws)) result.exit_code = WEXITSTATUS(ws);
    if (WIFSIGNALED(ws)) result.signal = WTERMSIG(ws);
  } else if (WIFSIGNALED(init_status)) {
    result.signal = WTERMSIG(init_status);
  }
  if (result.limit == LimitHit::none && !result.timed_out) {
    if (result.signal == SIGXCPU || result.exit_code == 128 + SIGXCPU) {
      result.limit = LimitHit::cpu_time;
      result.message = "CPU time limit reached";
    } else if (result.signal == SIGXFSZ || result.exit_code == 128 + SIGXFSZ) {
      result.limit = LimitHit::file_size;
      result.message = "file size limit reached";
    } else if (cgroup.memory_limit_hit() && (result.signal == SIGKILL || result.exit_code != 0)) {
      result.limit = LimitHit::memory;
      result.message = "memory limit reached";
    } else if (cgroup.pids_limit_hit()) {
      result.limit = LimitHit::processes;
      result.message = "process limit reached";
    } else if (result.signal == SIGKILL && config.limits.cpu_seconds > 0 &&
               usage.ru_utime.tv_sec + usage.ru_stime.tv_sec >= config.limits.cpu_seconds) {
      result.limit = LimitHit::cpu_time;
      result.message = "CPU time limit reached";
    }
  }
  return result;
}

}  // namespace agentrt::sandbox
