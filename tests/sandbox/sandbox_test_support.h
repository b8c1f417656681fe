// Helpers for the escape and fault battery: a fresh workspace per test and a shell runner.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>

#include "sandbox/sandbox.h"

namespace agentrt::sandbox::testing {

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    workspace_ =
        std::filesystem::temp_directory_path() / ("agentrt-sbx-test-" + std::to_string(::getpid()) +
                                                  "-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(workspace_);
    bool ok = false;
    for (const auto& l : probe_layers()) {
      if (l.layer == Layer::mount_namespace) ok = l.active;
    }
    if (!ok)
      GTEST_SKIP() << "namespaces unavailable on this machine: the sandbox refuses to run (see "
                      "agentrt sandbox doctor)";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(workspace_, ec);
  }
  SandboxConfig shell(const std::string& script) const {
    SandboxConfig c;
    c.argv = {"bash", "-c", script};
    c.workspace = workspace_;
    c.limits.wall_seconds = 10;
    return c;
  }
  bool layer_active(const SandboxResult& r, Layer layer) const {
    for (const auto& l : r.layers) {
      if (l.layer == layer) return l.active;
    }
    return false;
  }
  std::filesystem::path workspace_;
};

}  // namespace agentrt::sandbox::testing
