// Fork bomb, memory bomb, disk filler, infinite loops and daemons, output floods.
#include <cstdio>

#include "tests/sandbox/sandbox_test_support.h"

namespace agentrt::sandbox::testing {
namespace {

int host_processes_matching(const std::string& needle) {
  FILE* p = ::popen(("pgrep -f '" + needle + "' | wc -l").c_str(), "r");
  int n = 0;
  if (p && std::fscanf(p, "%d", &n) != 1) n = -1;
  if (p) ::pclose(p);
  return n;
}

TEST_F(SandboxTest, ForkBombIsContained) {
  auto config = shell("f(){ f|f& }; f; sleep 1");
  config.limits.max_processes = 32;
  config.limits.wall_seconds = 5;
  const auto r = run(config);
  EXPECT_TRUE(r.limit == LimitHit::processes || r.timed_out) << to_string(r.limit);
  if (layer_active(r, Layer::cgroup_pids)) {
    EXPECT_EQ(r.limit, LimitHit::processes);
  }
  // The host is unaffected: a fresh sandbox still runs afterwards.
  EXPECT_EQ(run(shell("echo ok")).stdout_data, "ok\n");
  EXPECT_LT(r.duration_seconds, 6.0);
}

TEST_F(SandboxTest, MemoryBombIsKilledAndReported) {
  auto config = shell("python3 -c 'x = bytearray(400 * 1024 * 1024); print(len(x))'");
  config.limits.memory_bytes = 64ull << 20;
  const auto r = run(config);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.stdout_data.find("419430400"), std::string::npos);
  if (!layer_active(r, Layer::cgroup_memory))
    GTEST_SKIP() << "no memory cgroup: RLIMIT_AS contained it, unreported";
  EXPECT_EQ(r.limit, LimitHit::memory);
}

TEST_F(SandboxTest, DiskFillerHitsTheFileSizeLimit) {
  auto config = shell("head -c 50000000 /dev/zero > big.bin");
  config.limits.file_size_bytes = 1 << 20;
  const auto r = run(config);
  EXPECT_EQ(r.limit, LimitHit::file_size);
  EXPECT_LE(std::filesystem::file_size(workspace_ / "big.bin"), 1u << 20);
}

TEST_F(SandboxTest, WallTimeoutKillsTheWholeTreeIncludingDaemons) {
  auto config = shell("(setsid sleep 4242.5 &); trap '' TERM; sleep 4243.5 & while :; do :; done");
  config.limits.wall_seconds = 1;
  const auto r = run(config);
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.limit, LimitHit::wall_timeout);
  EXPECT_LT(r.duration_seconds, 3.0);
  EXPECT_EQ(host_processes_matching("sleep 424[23].5"), 0);
}

TEST_F(SandboxTest, CpuLimitStopsABusyLoop) {
  auto config = shell("while :; do :; done");
  config.limits.cpu_seconds = 1;
  config.limits.wall_seconds = 8;
  const auto r = run(config);
  EXPECT_EQ(r.limit, LimitHit::cpu_time) << r.message;
  EXPECT_FALSE(r.timed_out);
}

TEST_F(SandboxTest, OutputFloodIsCappedAndReported) {
  auto config = shell("yes | head -c 300000; echo err >&2");
  config.limits.stdout_cap = 1000;
  const auto r = run(config);
  EXPECT_EQ(r.stdout_data.size(), 1000u);
  EXPECT_TRUE(r.stdout_truncated);
  EXPECT_FALSE(r.stderr_truncated);
  EXPECT_EQ(r.stderr_data, "err\n");
}

TEST_F(SandboxTest, ExitCodesSignalsStdinAndCancellation) {
  EXPECT_EQ(run(shell("exit 7")).exit_code, 7);
  EXPECT_EQ(run(shell("kill -SEGV $$")).signal, SIGSEGV);
  auto config = shell("cat");
  config.stdin_data = "piped input";
  EXPECT_EQ(run(config).stdout_data, "piped input");
  std::atomic<bool> cancel{true};
  const auto r = run(shell("sleep 30"), &cancel);
  EXPECT_LT(r.duration_seconds, 2.0);
  EXPECT_EQ(r.message, "cancelled");
}

}  // namespace
}  // namespace agentrt::sandbox::testing
