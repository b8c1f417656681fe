#include <gtest/gtest.h>

#include "tests/cli/cli_test_support.h"

namespace {

using agentrt::testing::run_cli;

TEST(SandboxCli, ExitStatusContract) {
  EXPECT_EQ(run_cli("sandbox run -- true").exit_code, 0);
  EXPECT_EQ(run_cli("sandbox run -- sh -c 'exit 5'").exit_code, 5);
  const auto timeout = run_cli("sandbox run --timeout 1 -- sh -c 'while :; do :; done'", "", true);
  EXPECT_EQ(timeout.exit_code, 124);
  EXPECT_NE(timeout.out.find("timeout"), std::string::npos) << timeout.out;
  const auto memory =
      run_cli("sandbox run --memory 32 -- python3 -c 'x = bytearray(300 * 2**20)'", "", true);
  EXPECT_NE(memory.exit_code, 0);
  EXPECT_EQ(run_cli("sandbox run -- echo passthrough").out, "passthrough\n");
}

TEST(SandboxCli, DoctorListsLayersAndBadFlagsAreErrors) {
  const auto doctor = run_cli("sandbox doctor");
  EXPECT_EQ(doctor.exit_code, 0);
  EXPECT_NE(doctor.out.find("seccomp"), std::string::npos);
  EXPECT_EQ(run_cli("sandbox run --bogus -- true").exit_code, 2);
  EXPECT_EQ(run_cli("sandbox run").exit_code, 2);
}

}  // namespace
