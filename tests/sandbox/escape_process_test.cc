// ptrace, mount, unshare, signals to outside processes, environment secrets.
#include <signal.h>
#include <stdlib.h>

#include "tests/sandbox/sandbox_test_support.h"

namespace agentrt::sandbox::testing {
namespace {

TEST_F(SandboxTest, CommandIsNotPidOneAndRunsUnprivileged) {
  const auto r =
      run(shell("echo $$; id -u; grep CapEff /proc/self/status; grep Seccomp: /proc/self/status"));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.stdout_data.rfind("2\n", 0), std::string::npos) << r.stdout_data;
  EXPECT_NE(r.stdout_data.find("1000"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("CapEff:\t0000000000000000"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("Seccomp:\t2"), std::string::npos);
}

TEST_F(SandboxTest, PtraceIsDenied) {
  const auto r =
      run(shell("sleep 5 & python3 -c 'import ctypes,sys; l=ctypes.CDLL(None); print(l.ptrace(16, "
                "int(sys.argv[1]), 0, 0))' $!"));
  EXPECT_NE(r.stdout_data.find("-1"), std::string::npos) << r.stdout_data << r.stderr_data;
}

TEST_F(SandboxTest, MountAndUnshareAreDenied) {
  const auto r =
      run(shell("mount -t tmpfs none /tmp 2>/dev/null || echo nomount; unshare -r true 2>/dev/null "
                "|| echo nounshare;"
                " unshare -n true 2>/dev/null || echo nonet"));
  EXPECT_NE(r.stdout_data.find("nomount"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("nounshare"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("nonet"), std::string::npos);
}

TEST_F(SandboxTest, ProcessesOutsideCannotBeSignalled) {
  const auto r = run(shell("kill -0 " + std::to_string(::getpid()) +
                           " 2>/dev/null && echo reached || echo unreachable"));
  EXPECT_NE(r.stdout_data.find("unreachable"), std::string::npos);
}

TEST_F(SandboxTest, ParentEnvironmentSecretsAreAbsent) {
  ::setenv("AGENTRT_TEST_SECRET", "hunter2", 1);
  auto config = shell("env");
  config.env.push_back({"ALLOWED", "yes"});
  const auto r = run(config);
  EXPECT_EQ(r.stdout_data.find("hunter2"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("ALLOWED=yes"), std::string::npos);
  ::unsetenv("AGENTRT_TEST_SECRET");
}

}  // namespace
}  // namespace agentrt::sandbox::testing
