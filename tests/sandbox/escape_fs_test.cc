// Reading and writing outside the workspace, by every route a model might try.
#include <fstream>

#include "tests/sandbox/sandbox_test_support.h"

namespace agentrt::sandbox::testing {
namespace {

TEST_F(SandboxTest, HostSecretsAreNotVisible) {
  const auto r =
      run(shell("cat /etc/shadow; cat /root/.bashrc; ls /home; cat /proc/1/root/etc/shadow; ls "
                "/etc/ssl/private; echo done"));
  EXPECT_EQ(r.stdout_data, "done\n") << r.stderr_data;
}

TEST_F(SandboxTest, DotDotAndAbsolutePathsStayInside) {
  const auto r =
      run(shell("cat ../../../../etc/shadow || echo blocked; ls /workspace/../ | tr '\\n' ' '"));
  EXPECT_NE(r.stdout_data.find("blocked"), std::string::npos);
  EXPECT_EQ(r.stdout_data.find("shadow"), std::string::npos);
}

TEST_F(SandboxTest, SymlinksPlantedInTheWorkspaceCannotReachTheHost) {
  std::filesystem::create_symlink("/etc/shadow", workspace_ / "shadow_link");
  std::filesystem::create_symlink("/root", workspace_ / "root_link");
  const auto r = run(shell("cat shadow_link || echo nolink; ls root_link/ || echo noroot"));
  EXPECT_NE(r.stdout_data.find("nolink"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("noroot"), std::string::npos);
}

TEST_F(SandboxTest, WritesOutsideTheWorkspaceFail) {
  const auto r =
      run(shell("echo x > /usr/evil 2>/dev/null || echo usr-ro; echo x > /etc/evil 2>/dev/null || "
                "echo etc-ro;"
                " echo x > /evil 2>/dev/null || echo root-ro; echo ok > inside.txt"));
  EXPECT_NE(r.stdout_data.find("usr-ro"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("etc-ro"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("root-ro"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists("/usr/evil"));
  std::ifstream in(workspace_ / "inside.txt");
  std::string s;
  in >> s;
  EXPECT_EQ(s, "ok");
}

TEST_F(SandboxTest, SetuidBinariesGiveNothing) {
  // The copy is owned by the sandbox user, the workspace is nosuid and no_new_privs is set.
  const auto r =
      run(shell("cp /usr/bin/id ./suid_id && chmod u+s ./suid_id && ./suid_id -u;"
                " grep NoNewPrivs /proc/self/status; grep ' /workspace ' /proc/self/mounts"));
  EXPECT_NE(r.stdout_data.find("1000\n"), std::string::npos) << r.stdout_data << r.stderr_data;
  EXPECT_NE(r.stdout_data.find("NoNewPrivs:\t1"), std::string::npos);
  EXPECT_NE(r.stdout_data.find("nosuid"), std::string::npos);
}

}  // namespace
}  // namespace agentrt::sandbox::testing
