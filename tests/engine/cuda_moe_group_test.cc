// routed_experts' grouping of (row, expert) pairs by expert (engine/cuda/moe.cu): the one-block
// kernel of decode batches and the multi-block kernels of prefills against a host stable sort.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tests/engine/cuda_test_util.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/kernels.h"
#endif

namespace agentrt::engine {
namespace {

#ifdef AGENTRT_HAVE_CUDA
using cuda::DeviceBuffer;
using testing::download;
using testing::upload;

// One grouping against the host's: every output array equal.
void check_grouping(const std::vector<int32_t>& chosen, int64_t experts, bool one_block) {
  const int64_t P = int64_t(chosen.size());
  SCOPED_TRACE(std::to_string(P) + " pairs, " + std::to_string(experts) + " experts" +
               (one_block ? ", one block" : ""));
  // The host's: pairs stably sorted by expert, each pair's place, the used experts' segments.
  std::vector<int32_t> order(P), slot(P), active, seg_start;
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return chosen[a] < chosen[b]; });
  for (int64_t s = 0; s < P; ++s) slot[order[s]] = int32_t(s);
  for (int64_t s = 0; s < P; ++s)
    if (s == 0 || chosen[order[s]] != chosen[order[s - 1]]) {
      active.push_back(chosen[order[s]]);
      seg_start.push_back(int32_t(s));
    }
  seg_start.push_back(int32_t(P));

  auto d_chosen = upload(chosen);
  DeviceBuffer d_order(P * 4), d_slot(P * 4), d_active(experts * 4), d_seg((experts + 1) * 4),
      d_n(4), d_hist(std::max<int64_t>(cuda::group_expert_pairs_hist_ints(P, experts), 1) * 4);
  cuda::group_expert_pairs(d_chosen.as<int32_t>(), P, experts, d_order.as<int32_t>(),
                           d_slot.as<int32_t>(), d_active.as<int32_t>(), d_seg.as<int32_t>(),
                           d_n.as<int32_t>(), d_hist.as<int32_t>(), one_block, nullptr);
  const int32_t used = download<int32_t>(d_n, 1)[0];
  ASSERT_EQ(used, int32_t(active.size()));
  EXPECT_EQ(download<int32_t>(d_order, size_t(P)), order);
  EXPECT_EQ(download<int32_t>(d_slot, size_t(P)), slot);
  EXPECT_EQ(download<int32_t>(d_active, size_t(used)), active);
  EXPECT_EQ(download<int32_t>(d_seg, size_t(used) + 1), seg_start);
}
#endif

// Counts of pairs that fill one block, several with a short last one, and a 16K prefill's
// (98,304 pairs of 256 experts); experts not a multiple of 32; some experts unused; the same
// expert over long runs (skewed routing) and evenly spread.
TEST(CudaMoeGroup, GroupsPairsAsAStableSortByExpert) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  std::mt19937 rng(17);
  for (const int64_t experts : {int64_t(256), int64_t(72)})
    for (const int64_t P :
         {int64_t(6), int64_t(1500), int64_t(2048), int64_t(9001), int64_t(98304)}) {
      std::vector<int32_t> chosen(P);
      // Skewed: a quarter of the experts unused, and a few taking most pairs.
      std::uniform_int_distribution<int32_t> any(0, int32_t(experts * 3 / 4) - 1);
      for (auto& e : chosen) e = (rng() % 4 == 0) ? int32_t(rng() % 3) : any(rng);
      for (const bool one_block : {false, true}) check_grouping(chosen, experts, one_block);
    }
#endif
}

}  // namespace
}  // namespace agentrt::engine
