// Spawn-to-exit overhead of `true` in our sandbox vs `bwrap --unshare-all` (bubblewrap), on
// this machine. Prints mean / p50 / p99 milliseconds.  bench_sandbox [--runs N]
#include "sandbox/sandbox.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

struct Stats {
  double mean, p50, p99;
};

Stats measure(int runs, const std::function<bool()>& once) {
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!once()) return {-1, -1, -1};
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  double sum = 0;
  for (double v : ms) sum += v;
  return {sum / ms.size(), ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]};
}

bool run_bwrap() {
  const pid_t pid = ::fork();
  if (pid == 0) {
    execlp("bwrap", "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
           "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64",
           "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true",
           static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 50;
  if (argc == 3 && std::string(argv[1]) == "--runs") runs = std::stoi(argv[2]);
  agentrt::sandbox::SandboxConfig config;
  config.argv = {"true"};
  const Stats ours = measure(runs, [&] { return agentrt::sandbox::run(config).exit_code == 0; });
  const Stats bwrap = measure(runs, run_bwrap);
  std::printf(
      "| sandbox (spawn-to-exit of `true`, %d runs) | mean ms | p50 ms | p99 ms "
      "|\n|---|---:|---:|---:|\n",
      runs);
  std::printf("| agentrt (all 13 layers incl. cgroups + seccomp) | %.2f | %.2f | %.2f |\n",
              ours.mean, ours.p50, ours.p99);
  if (bwrap.mean < 0)
    std::printf("| bwrap --unshare-all | failed to run here | | |\n");
  else
    std::printf("| bwrap --unshare-all | %.2f | %.2f | %.2f |\n", bwrap.mean, bwrap.p50, bwrap.p99);
  return 0;
}
