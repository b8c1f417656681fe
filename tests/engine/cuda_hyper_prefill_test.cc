// hyper_post_project + hyper_pre_projected (engine/cuda/hyper_prefill.cu): the prefill pass's mHC
// boundary with the post step, projection and sum of squares in one pass over the streams,
// against hyper_post then hyper_pre (the cuBLAS projection from 256 rows on).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tests/engine/cuda_test_util.h"
#include "tests/engine/golden_fixture.h"

#ifdef AGENTRT_HAVE_CUDA
#include <cublas_v2.h>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/hyper_prefill.h"
#include "engine/cuda/kernels.h"
#endif

namespace agentrt::engine {
namespace {

#ifdef AGENTRT_HAVE_CUDA
using cuda::DeviceBuffer;
using testing::download;
using testing::upload;

// How many floats of got differ in their bits from want (the post step must be hyper_post's).
int64_t differing_bits(const std::vector<float>& got, const std::vector<float>& want) {
  int64_t differ = 0;
  for (size_t i = 0; i < want.size(); ++i)
    differ += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
  return differ;
}
#endif

TEST(CudaHyperPrefill, SupportsHc4AndWholeSlices) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  EXPECT_TRUE(cuda::hyper_post_project_supported(16384, 4, 4096));
  EXPECT_TRUE(cuda::hyper_post_project_supported(1, 4, 128));
  EXPECT_FALSE(cuda::hyper_post_project_supported(0, 4, 4096));
  EXPECT_FALSE(cuda::hyper_post_project_supported(300, 2, 4096));
  EXPECT_FALSE(cuda::hyper_post_project_supported(300, 4, 4100));
  EXPECT_FALSE(cuda::hyper_post_project_supported(300, 4, 0));
  EXPECT_EQ(cuda::hyper_post_project_splits(4096), 32);
  DeviceBuffer any(4096);
  const cuda::HyperDevice none{any.as<float>(), any.as<float>(), any.as<float>()};
  EXPECT_THROW(cuda::hyper_post_project(none, any.as<float>(), nullptr, any.as<float>(), 3, 4, 96,
                                        false, any.as<float>(), nullptr),
               std::invalid_argument);
#endif
}

// Streams bit for bit, x and the mix per row against hyper_post then hyper_pre; head and body,
// with and without a pending block output, many rows (several batches a block, the last one
// short) and a few.
TEST(CudaHyperPrefill, PostProjectThenPreMatchesPostThenPre) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  std::mt19937 rng(21);
  const int64_t hc = 4, mw = cuda::hyper_mix_width(hc);
  const int iters = 20;
  const float eps = 1e-6f;
  cublasHandle_t blas = nullptr;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  for (const auto& [H, n] :
       {std::pair<int64_t, int64_t>{4096, 300}, {1024, 300}, {4096, 3}, {1024, 5}, {128, 37}})
    for (bool head : {false, true})
      for (bool post : {true, false}) {
        SCOPED_TRACE("hidden " + std::to_string(H) + " rows " + std::to_string(n) +
                     (head ? " head" : " body") + (post ? " after a block" : ""));
        ASSERT_TRUE(cuda::hyper_post_project_supported(n, hc, H));
        const int64_t outputs = head ? hc : (2 + hc) * hc;
        const testing::RandomHyperCase r(outputs, hc, H, n, head, rng);
        testing::HyperCaseOnDevice d(r, n, mw, rng);
        const cuda::HyperDevice& w = d.w;
        auto &s_want = d.s_want, &s_got = d.s_got, &m_want = d.m_want, &m_got = d.m_got;
        const auto &d_y = d.y, &d_norm = d.norm;
        const int splits = cuda::hyper_post_project_splits(H);
        DeviceBuffer x_want(n * H * 4), x_got(n * H * 4),
            projected(cuda::hyper_projected_floats(n, hc) * 4),
            sums(cuda::hyper_post_project_floats(n, hc, H) * 4);
        const float* block_out = post ? d_y.as<float>() : nullptr;
        if (post)
          cuda::hyper_post(m_want.as<float>(), block_out, n, hc, H, s_want.as<float>(), nullptr);
        cuda::hyper_pre(w, s_want.as<float>(), n, hc, H, iters, eps, eps, d_norm.as<float>(), head,
                        head ? nullptr : m_want.as<float>(), x_want.as<float>(),
                        projected.as<float>(), nullptr, blas);
        cuda::hyper_post_project(w, m_got.as<float>(), block_out, s_got.as<float>(), n, hc, H, head,
                                 sums.as<float>(), nullptr);
        cuda::hyper_pre_projected(w, s_got.as<float>(), sums.as<float>(), splits, n, hc, H, iters,
                                  eps, eps, d_norm.as<float>(), head,
                                  head ? nullptr : m_got.as<float>(), x_got.as<float>(), nullptr);
        EXPECT_EQ(
            differing_bits(download<float>(s_got, n * hc * H), download<float>(s_want, n * hc * H)),
            0);
        const auto xw = download<float>(x_want, n * H), xg = download<float>(x_got, n * H);
        const auto mwant = download<float>(m_want, n * mw), mgot = download<float>(m_got, n * mw);
        for (int64_t t = 0; t < n; ++t) {
          EXPECT_LE(testing::rel_l2(xg.data() + t * H, xw.data() + t * H, H), 1e-5) << "row " << t;
          EXPECT_LE(testing::rel_l2(mgot.data() + t * mw, mwant.data() + t * mw, mw), 1e-5)
              << "mix of row " << t;
        }
        // The pre step with the streams staged in shared memory (CudaOptions::prefill_pre_staged):
        // the same arithmetic in the same order, so the same bits.
        DeviceBuffer x_staged(n * H * 4), m_staged(n * mw * 4);
        cuda::hyper_pre_projected(w, s_got.as<float>(), sums.as<float>(), splits, n, hc, H, iters,
                                  eps, eps, d_norm.as<float>(), head,
                                  head ? nullptr : m_staged.as<float>(), x_staged.as<float>(),
                                  nullptr, true);
        EXPECT_EQ(differing_bits(download<float>(x_staged, n * H), xg), 0) << "staged x";
        if (!head) {
          EXPECT_EQ(differing_bits(download<float>(m_staged, n * mw), mgot), 0) << "staged mix";
        }
        // The partial sums are added in a fixed order: projecting the same streams again (from
        // memory, not from the post step's registers) gives the same bits.
        const auto first = download<float>(sums, cuda::hyper_post_project_floats(n, hc, H));
        cuda::hyper_post_project(w, m_got.as<float>(), nullptr, s_got.as<float>(), n, hc, H, head,
                                 sums.as<float>(), nullptr);
        EXPECT_EQ(differing_bits(download<float>(sums, first.size()), first), 0)
            << "a second projection";
      }
  cublasDestroy(blas);
#endif
}

}  // namespace
}  // namespace agentrt::engine
