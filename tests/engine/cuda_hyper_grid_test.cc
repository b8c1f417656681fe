// hyper_fused_grid (engine/cuda/hyper_grid.cu): the decode step's mHC boundary with every block
// finishing its own channels, against hyper_post then hyper_pre; and a model whose one-row
// passes take it against one that takes hyper_fused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/hyper_connection.h"
#include "engine/matmul.h"
#include "engine/model.h"
#include "engine/model_init.h"
#include "engine/sampler.h"
#include "tests/engine/cuda_test_util.h"
#include "tests/engine/golden_fixture.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/cuda_model.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/kernels.h"
#endif

namespace agentrt::engine {
namespace {

#ifdef AGENTRT_HAVE_CUDA
using cuda::DeviceBuffer;
using testing::download;
using testing::randn;
using testing::upload;

// The CPU engine's comb (hyper_sinkhorn) on a row's mix whose comb is still the raw projection.
void finish_comb(float* mix, int64_t hc, int iters, float eps) {
  hyper_sinkhorn(mix + 2 * hc, hc, iters, eps);
}
#endif

// Streams, x and the mix against hyper_post then hyper_pre; head and body, with and without a
// pending block output, one row and several, the sums by butterflies and by a reduce-scatter
// (CudaOptions::mhc_scatter); launched twice (the row barrier's counters).
TEST(CudaHyperGrid, StepMatchesPostThenPre) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  std::mt19937 rng(12);
  const int64_t hc = 4, mw = cuda::hyper_mix_width(hc);
  const int iters = 20;
  const float eps = 1e-6f;
  EXPECT_FALSE(cuda::hyper_grid_supported(5, hc, 4096));
  EXPECT_FALSE(cuda::hyper_grid_supported(1, hc, 4224));
  EXPECT_FALSE(cuda::hyper_grid_supported(1, 2, 4096));
  for (const auto& [H, n] : {std::pair<int64_t, int64_t>{4096, 1}, {256, 3}, {1024, 4}, {2048, 2}})
    for (bool head : {false, true})
      for (bool post : {true, false})
        for (bool scatter : {false, true}) {
          SCOPED_TRACE("hidden " + std::to_string(H) + " rows " + std::to_string(n) +
                       (head ? " head" : " body") + (post ? " after a block" : "") +
                       (scatter ? " scatter" : ""));
          ASSERT_TRUE(cuda::hyper_grid_supported(n, hc, H));
          const int64_t outputs = head ? hc : (2 + hc) * hc;
          const testing::RandomHyperCase r(outputs, hc, H, n, head, rng);
          // The mix the boundary before left: pre and post final, comb raw (grid) or finished.
          std::vector<float> raw(n * mw);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t i = 0; i < mw; ++i)
              raw[t * mw + i] = i < 2 * hc ? std::uniform_real_distribution<float>(0.0f, 1.0f)(rng)
                                           : std::normal_distribution<float>(0.0f, 1.0f)(rng);
          auto finished = raw;
          for (int64_t t = 0; t < n; ++t) finish_comb(finished.data() + t * mw, hc, iters, eps);
          auto d_fn = upload(r.fn), d_base = upload(r.base), d_scale = upload(r.scale),
               d_y = upload(r.y), d_norm = upload(r.norm);
          const cuda::HyperDevice w{d_fn.as<float>(), d_base.as<float>(), d_scale.as<float>()};
          auto s_want = upload(r.streams), s_got = upload(r.streams), m_want = upload(finished),
               m_got = upload(raw);
          DeviceBuffer x_want(n * H * 4), x_got(n * H * 4),
              projected(cuda::hyper_projected_floats(n, hc) * 4),
              partial(cuda::hyper_grid_scratch_floats(n, hc) * 4), arrived(n * 8);
          cuda::zero_device(arrived.get(), arrived.bytes());
          if (post)
            cuda::hyper_post(m_want.as<float>(), d_y.as<float>(), n, hc, H, s_want.as<float>(),
                             nullptr);
          cuda::hyper_pre(w, s_want.as<float>(), n, hc, H, iters, eps, eps, d_norm.as<float>(),
                          head, head ? nullptr : m_want.as<float>(), x_want.as<float>(),
                          projected.as<float>(), nullptr);
          auto grid = [&](const float* block_out) {
            cuda::hyper_fused_grid(w, block_out, s_got.as<float>(), n, hc, H, iters, eps, eps,
                                   d_norm.as<float>(), head, m_got.as<float>(), x_got.as<float>(),
                                   partial.as<float>(), arrived.as<unsigned>(), nullptr, nullptr,
                                   nullptr, nullptr, scatter);
          };
          grid(post ? d_y.as<float>() : nullptr);
          const auto sw = download<float>(s_want, n * hc * H),
                     sg = download<float>(s_got, n * hc * H);
          const auto xw = download<float>(x_want, n * H), xg = download<float>(x_got, n * H);
          const auto mwant = download<float>(m_want, n * mw);
          auto mgot = download<float>(m_got, n * mw);
          for (int64_t t = 0; t < n; ++t) {
            EXPECT_LE(testing::rel_l2(sg.data() + t * hc * H, sw.data() + t * hc * H, hc * H), 1e-6)
                << "streams of row " << t;
            EXPECT_LE(testing::rel_l2(xg.data() + t * H, xw.data() + t * H, H), 1e-5)
                << "row " << t;
            if (head) continue;  // the head leaves the mix as it found it
            finish_comb(mgot.data() + t * mw, hc, iters, eps);
            for (int64_t i = 0; i < mw; ++i)
              EXPECT_NEAR(mgot[t * mw + i], mwant[t * mw + i], 1e-5) << "row " << t << " mix " << i;
          }
          // Again from its own result, without a block output: the barrier's counters work twice.
          grid(nullptr);
          const auto x2 = download<float>(x_got, n * H);
          for (int64_t t = 0; t < n; ++t)
            EXPECT_LE(testing::rel_l2(x2.data() + t * H, xw.data() + t * H, H), 1e-5)
                << "second launch, row " << t;
        }
  // More rows than the barrier allows are refused with the shape.
  DeviceBuffer any(4096);
  const cuda::HyperDevice none{any.as<float>(), any.as<float>(), any.as<float>()};
  EXPECT_THROW(cuda::hyper_fused_grid(none, nullptr, any.as<float>(), 5, hc, 256, iters, eps, eps,
                                      any.as<float>(), false, any.as<float>(), any.as<float>(),
                                      any.as<float>(), any.as<unsigned>(), nullptr),
               std::invalid_argument);
#endif
}

// The first boundary of a pass taking the embedding itself: the streams become hc copies of
// each row's embedding, and x and the mix are hyper_pre's of those streams.
TEST(CudaHyperGrid, FirstBoundaryTakesTheEmbedding) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  std::mt19937 rng(13);
  const int64_t hc = 4, mw = cuda::hyper_mix_width(hc), vocab = 11;
  const int iters = 20;
  const float eps = 1e-6f;
  for (const auto& [H, n] : {std::pair<int64_t, int64_t>{4096, 1}, {512, 3}}) {
    SCOPED_TRACE("hidden " + std::to_string(H) + " rows " + std::to_string(n));
    const int64_t outputs = (2 + hc) * hc;
    auto fn = randn(outputs * hc * H, rng, 0.05f), base = randn(outputs, rng, 0.5f),
         scale = randn(3, rng, 0.3f);
    for (auto& v : scale) v += 1.0f;
    const auto table = randn(vocab * H, rng), norm = randn(H, rng, 0.1f);
    std::vector<int32_t> tokens(n);
    for (auto& t : tokens) t = int32_t(rng() % vocab);
    std::vector<float> streams(n * hc * H);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t k = 0; k < hc; ++k)
        std::copy_n(table.begin() + tokens[t] * H, H, streams.begin() + (t * hc + k) * H);
    auto d_fn = upload(fn), d_base = upload(base), d_scale = upload(scale), d_norm = upload(norm),
         d_table = upload(table), d_tokens = upload(tokens), s_want = upload(streams);
    const cuda::HyperDevice w{d_fn.as<float>(), d_base.as<float>(), d_scale.as<float>()};
    const WeightMatrix embed{WeightType::f32, vocab, H, d_table.as<float>()};
    DeviceBuffer s_got(n * hc * H * 4), x_want(n * H * 4), x_got(n * H * 4), m_want(n * mw * 4),
        m_got(n * mw * 4), projected(cuda::hyper_projected_floats(n, hc) * 4),
        partial(cuda::hyper_grid_scratch_floats(n, hc) * 4), arrived(n * 8);
    cuda::zero_device(arrived.get(), arrived.bytes());
    cuda::hyper_pre(w, s_want.as<float>(), n, hc, H, iters, eps, eps, d_norm.as<float>(), false,
                    m_want.as<float>(), x_want.as<float>(), projected.as<float>(), nullptr);
    cuda::hyper_fused_grid(w, nullptr, s_got.as<float>(), n, hc, H, iters, eps, eps,
                           d_norm.as<float>(), false, m_got.as<float>(), x_got.as<float>(),
                           partial.as<float>(), arrived.as<unsigned>(), nullptr, &embed,
                           d_tokens.as<int32_t>());
    EXPECT_EQ(download<float>(s_got, n * hc * H), streams);
    const auto xw = download<float>(x_want, n * H), xg = download<float>(x_got, n * H);
    const auto mwant = download<float>(m_want, n * mw);
    auto mgot = download<float>(m_got, n * mw);
    for (int64_t t = 0; t < n; ++t) {
      EXPECT_LE(testing::rel_l2(xg.data() + t * H, xw.data() + t * H, H), 1e-5) << "row " << t;
      finish_comb(mgot.data() + t * mw, hc, iters, eps);
      for (int64_t i = 0; i < mw; ++i)
        EXPECT_NEAR(mgot[t * mw + i], mwant[t * mw + i], 1e-5) << "row " << t << " mix " << i;
    }
    // A block output with the embedding is refused.
    EXPECT_THROW(
        cuda::hyper_fused_grid(w, x_got.as<float>(), s_got.as<float>(), n, hc, H, iters, eps, eps,
                               d_norm.as<float>(), false, m_got.as<float>(), x_got.as<float>(),
                               partial.as<float>(), arrived.as<unsigned>(), nullptr, &embed,
                               d_tokens.as<int32_t>()),
        std::invalid_argument);
  }
#endif
}

// A model decoding with every one-row boundary through the grid step (and with the embedding
// inside the first, or with the sums by a reduce-scatter) gives the logits of the same model
// with hyper_fused (the Gram matrix's norm adds its sums in another order).
TEST(CudaHyperGrid, ModelGivesTheLogitsOfTheFusedStep) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_grid_mhc";
  testing::write_small_fp8_model(dir, 9);
  for (int grid_mhc : {1, 2, 3}) {  // 3: 1 with mhc_scatter
    SCOPED_TRACE("grid_mhc " + std::to_string(grid_mhc));
    cuda::CudaOptions options;
    options.grid_mhc = 0;
    const auto fused = load_cuda_model(dir, {Device::cuda}, options);
    options.grid_mhc = grid_mhc == 3 ? 1 : grid_mhc;
    options.mhc_scatter = grid_mhc == 3;
    const auto grid = load_cuda_model(dir, {Device::cuda}, options);
    std::mt19937 rng(5);
    std::vector<int32_t> ids(240);
    for (auto& t : ids) t = int32_t(rng() % 3000);
    auto sf = fused->new_sequence(), sg = grid->new_sequence();
    sf->forward(std::span(ids).first(200));
    sg->forward(std::span(ids).first(200));
    for (size_t p = 200; p < 240; ++p) {
      const auto f = sf->forward(std::span(ids).subspan(p, 1));
      const auto g = sg->forward(std::span(ids).subspan(p, 1));
      ASSERT_EQ(f.size(), g.size());
      EXPECT_LE(testing::rel_l2(g.data(), f.data(), int64_t(f.size())), 1e-5) << "step " << p;
    }
    // Greedy picks on the device (decode ahead: the next step queued behind the pick) agree too.
    sf->truncate(200);
    sg->truncate(200);
    Sampler pf(SamplingParams{.temperature = 0.0f}), pg(SamplingParams{.temperature = 0.0f});
    std::vector<int32_t> tf{ids[200]}, tg{ids[200]};
    for (int i = 0; i < 16; ++i) {
      tf = {sf->forward_and_sample(tf, pf).token};
      tg = {sg->forward_and_sample(tg, pg).token};
      EXPECT_EQ(tg[0], tf[0]) << "pick " << i;
    }
  }
  std::filesystem::remove_all(dir);
#endif
}

}  // namespace
}  // namespace agentrt::engine
