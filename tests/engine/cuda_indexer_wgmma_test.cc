// indexer_scores_wgmma (engine/cuda/indexer_wgmma.cu): the Lightning Indexer's prefill scores on
// Hopper's warpgroup MMA, against indexer_scores_mma_mirrored's plain bf16 products (split
// false): the same roundings in another order, and the same scores written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tests/engine/cuda_test_util.h"
#include "tests/engine/golden_fixture.h"

#ifdef AGENTRT_HAVE_CUDA
#include <cuda_runtime.h>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/indexer_wgmma.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/wgmma_runs.h"
#endif

namespace agentrt::engine {
namespace {

#ifndef AGENTRT_HAVE_CUDA
TEST(CudaIndexerWgmma, TakesSixtyFourHeadsOf128) { GTEST_SKIP() << testing::cuda_skip_reason(); }
#else
using cuda::DeviceBuffer;
using testing::download;
using testing::randn;
using testing::upload;

// No device needed: the shape is checked before anything is launched.
TEST(CudaIndexerWgmma, TakesSixtyFourHeadsOf128) {
  EXPECT_TRUE(cuda::indexer_scores_wgmma_supported(64, 128));
  for (const auto& [heads, dim] :
       {std::pair<int64_t, int64_t>{32, 128}, {128, 128}, {64, 64}, {64, 256}, {0, 128}, {64, 0}}) {
    EXPECT_FALSE(cuda::indexer_scores_wgmma_supported(heads, dim)) << heads << " x " << dim;
    EXPECT_THROW(cuda::indexer_scores_wgmma(nullptr, nullptr, 1.0f, nullptr, 4, heads, dim, nullptr,
                                            100, nullptr, nullptr, 100, nullptr),
                 std::invalid_argument)
        << heads << " x " << dim;
  }
  // Nothing to mirror the entries into (or no entries): refused the same way.
  float any = 0.0f;
  EXPECT_THROW(cuda::indexer_scores_wgmma(&any, &any, 1.0f, nullptr, 4, 64, 128, &any, 100, nullptr,
                                          &any, 100, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::indexer_scores_wgmma(&any, &any, 1.0f, nullptr, 4, 64, 128, nullptr, 100, &any,
                                          &any, 100, nullptr),
               std::invalid_argument);
}

// 64 heads of 128; rows seeing from none to all of the entries, counts rising and falling within
// each block of 8 rows, counts at the tile (64) and block chunk (2,048) edges, a row count that
// leaves the last block of rows short, and entries that fill one chunk or several with a partial
// last tile.
TEST(CudaIndexerWgmma, MatchesTheMirroredMmaKernel) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  if (!cuda::wgmma_kernels_run(device))
    GTEST_SKIP() << "indexer_wgmma.cu needs a GPU of compute capability 9.0 (wgmma)";
  const int64_t heads = 64, dim = 128;
  const std::vector<int64_t> edges = {0, 1, 63, 64, 65, 127, 128, 2047, 2048, 2049, 4095, 4096};
  for (const auto& [entries, n] : {std::pair<int64_t, int64_t>{1300, 70}, {4500, 91}}) {
    SCOPED_TRACE(std::to_string(n) + " rows, " + std::to_string(entries) + " entries");
    const int64_t stride = entries + 1;
    std::mt19937 rng{uint32_t(entries)};  // braces: not a function declaration
    const auto q = randn(n * heads * dim, rng), w = randn(n * heads, rng),
               ent = randn(entries * dim, rng);
    auto d_q = upload(q), d_w = upload(w), d_ent = upload(ent);
    std::vector<cuda::LayerRow> rows(n);
    for (int64_t t = 0; t < n; ++t) {
      rows[t].idx_entries = d_ent.as<float>();
      int64_t visible = (t * 97) % (entries + 1);
      if (t % 3 == 1 && t / 3 < int64_t(edges.size())) visible = edges[t / 3];
      rows[t].visible = int32_t(t == n - 1 ? entries : std::min(visible, entries));
    }
    auto d_rows = upload(rows);
    const float kUntouched = -7.0f;  // entries a row does not see keep it
    const std::vector<float> init(n * stride, kUntouched);

    auto want = upload(init), got = upload(init);
    DeviceBuffer mirror_want(cuda::key_mirror_bytes(dim, 0, entries, false)),
        mirror_got(cuda::key_mirror_bytes(dim, 0, entries, false));
    cuda::indexer_scores_mma_mirrored(
        d_q.as<float>(), d_w.as<float>(), 0.125f, d_rows.as<cuda::LayerRow>(), n, heads, dim,
        d_ent.as<float>(), entries, false, mirror_want.get(), want.as<float>(), stride, nullptr);
    cuda::indexer_scores_wgmma(d_q.as<float>(), d_w.as<float>(), 0.125f,
                               d_rows.as<cuda::LayerRow>(), n, heads, dim, d_ent.as<float>(),
                               entries, mirror_got.get(), got.as<float>(), stride, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto a = download<float>(want, n * stride), b = download<float>(got, n * stride);

    double worst = 0.0;
    int64_t worst_row = -1;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t vis = rows[t].visible;
      for (int64_t e = vis; e < stride; ++e)
        ASSERT_EQ(b[t * stride + e], kUntouched) << "row " << t << " entry " << e;
      if (vis == 0) continue;
      for (int64_t e = 0; e < vis; ++e)
        ASSERT_NE(b[t * stride + e], kUntouched) << "row " << t << " entry " << e << " unwritten";
      const double err = testing::rel_l2(b.data() + t * stride, a.data() + t * stride, vis);
      EXPECT_LE(err, 1e-3) << "row " << t << " of " << vis << " entries";
      if (err > worst) worst = err, worst_row = t;
    }
    std::cout << "[ wgmma indexer ] " << n << " rows, " << entries
              << " entries: worst relative L2 error " << worst << " (row " << worst_row << ")\n";
  }
}
#endif

}  // namespace
}  // namespace agentrt::engine
