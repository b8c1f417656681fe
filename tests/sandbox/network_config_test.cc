// Network isolation against a listener on the host's loopback; the config parser.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>

#include "tests/sandbox/sandbox_test_support.h"

namespace agentrt::sandbox::testing {
namespace {

struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(fd, 4);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  ~Listener() { ::close(fd); }
};

TEST_F(SandboxTest, HostLoopbackIsUnreachableWithoutNetwork) {
  Listener listener;
  const std::string script = "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(listener.port) +
                             " && echo connected || echo refused";
  const auto off = run(shell(script));
  EXPECT_NE(off.stdout_data.find("refused"), std::string::npos) << off.stdout_data;
  auto config = shell(script);
  config.network = true;
  const auto on = run(config);
  EXPECT_NE(on.stdout_data.find("connected"), std::string::npos) << on.stderr_data;
}

TEST(SandboxConfigParse, FieldsAndErrors) {
  const auto c = parse_config(nlohmann::json::parse(
      R"({"argv": ["ls"], "workspace": "/tmp", "network": true, "limits": {"wall_seconds": 2, "memory_bytes": 1048576},
          "env": {"A": "b"}, "binds": [{"host": "/usr/share", "inside": "/data"}], "required_layers": ["seccomp"]})"));
  EXPECT_EQ(c.argv, std::vector<std::string>{"ls"});
  EXPECT_TRUE(c.network);
  EXPECT_EQ(c.limits.memory_bytes, 1048576u);
  EXPECT_EQ(c.binds.at(0).inside, "/data");
  try {
    parse_config(nlohmann::json::parse(R"({"argv": ["ls"], "limits": {"wall_seconds": -1}})"));
    FAIL();
  } catch (const SandboxError& e) {
    EXPECT_NE(std::string(e.what()).find("limits.wall_seconds"), std::string::npos);
  }
  EXPECT_THROW(parse_config(nlohmann::json::parse(R"({"argv": ["ls"], "bogus": 1})")),
               SandboxError);
  EXPECT_THROW(parse_config(nlohmann::json::parse(R"({"argv": []})")), SandboxError);
  EXPECT_THROW(parse_layer("teleport"), SandboxError);
}

// A deep-input probe of fuzz_sandbox_config (UBSan): max_processes 1e12 passed the 1e12 bound
// of non_negative() and overflowed the conversion to int.
TEST(SandboxConfigParse, CountsPastIntAreAnError) {
  for (const char* field : {"max_processes", "max_open_files"}) {
    try {
      parse_config(nlohmann::json{{"argv", {"ls"}}, {"limits", {{field, 1e12}}}});
      FAIL() << field;
    } catch (const SandboxError& e) {
      EXPECT_EQ(std::string(e.what()),
                std::string("sandbox config: limits.") + field + ": must be at most 2147483647");
    }
  }
  EXPECT_EQ(parse_config(nlohmann::json{{"argv", {"ls"}}, {"limits", {{"max_processes", 64}}}})
                .limits.max_processes,
            64);
}

TEST(SandboxConfigParse, RandomMutationsNeverCrash) {
  std::mt19937 rng(17);
  const nlohmann::json values[] = {nullptr,
                                   true,
                                   -1,
                                   0,
                                   3.5,
                                   1e300,
                                   "",
                                   "x",
                                   nlohmann::json::array(),
                                   nlohmann::json::object(),
                                   nlohmann::json::array({"a", 1}),
                                   nlohmann::json::object({{"host", 3}})};
  const char* keys[] = {"argv", "workspace", "workspace_inside", "cwd",    "network", "stdin",
                        "env",  "binds",     "required_layers",  "limits", "zzz"};
  for (int i = 0; i < 2000; ++i) {
    nlohmann::json j = nlohmann::json::object();
    const int n = rng() % 5;
    for (int k = 0; k < n; ++k)
      j[keys[rng() % std::size(keys)]] = values[rng() % std::size(values)];
    if (rng() % 2)
      j["limits"] = nlohmann::json::object({{"wall_seconds", values[rng() % std::size(values)]}});
    try {
      parse_config(j);
    } catch (const SandboxError&) {
    }
  }
}

}  // namespace
}  // namespace agentrt::sandbox::testing
