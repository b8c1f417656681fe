// The layer report: every run says which layers were active; a required layer that is
// missing is refused, never silently skipped; runs in parallel threads stay independent.
#include <thread>
#include <vector>

#include "tests/sandbox/sandbox_test_support.h"

namespace agentrt::sandbox::testing {
namespace {

TEST_F(SandboxTest, EveryRunReportsAllLayersAndNetworkOptInIsReported) {
  auto config = shell("true");
  const auto r = run(config);
  EXPECT_EQ(r.layers.size(), std::size(kAllLayers));
  EXPECT_TRUE(layer_active(r, Layer::network_namespace));
  config.network = true;
  const auto with_network = run(config);
  EXPECT_FALSE(layer_active(with_network, Layer::network_namespace));
  // A run that needs isolated networking is refused when the caller also asked for network.
  config.required_layers = {Layer::network_namespace};
  EXPECT_THROW(run(config), SandboxError);
}

TEST_F(SandboxTest, MissingRequiredLayersAreRefusedOrPresent) {
  for (const auto& status : probe_layers()) {
    auto config = shell("true");
    config.required_layers = {status.layer};
    if (status.active) {
      EXPECT_EQ(run(config).exit_code, 0) << to_string(status.layer);
    } else {
      EXPECT_THROW(run(config), SandboxError) << to_string(status.layer) << ": " << status.detail;
    }
  }
}

TEST_F(SandboxTest, ParallelRunsAreIndependent) {
  std::vector<SandboxResult> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = run(shell("echo run" + std::to_string(i) + "; exit " + std::to_string(i)));
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].exit_code, static_cast<int>(i));
    EXPECT_EQ(results[i].stdout_data, "run" + std::to_string(i) + "\n");
  }
}

}  // namespace
}  // namespace agentrt::sandbox::testing
