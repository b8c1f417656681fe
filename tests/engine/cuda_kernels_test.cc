// The CUDA forward's kernels against the CPU engine's plain functions on random inputs of
// awkward sizes: the indexer's top-k (with ties, which must go to the lower index), attention
// with sinks over window + chosen entries, mHC mixing (Sinkhorn) + collapse + norm, and the
// grouped routed-expert products with MXFP4 weights. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "engine/attention.h"
#include "engine/hyper_connection.h"
#include "engine/indexer.h"
#include "engine/moe.h"
#include "engine/parallel.h"
#include "engine/quantize.h"
#include "engine/rmsnorm.h"
#include "engine/safetensors_writer.h"
#include "tests/engine/cuda_test_util.h"
#include "tests/engine/golden_fixture.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/attention_keys.cuh"
#include "engine/cuda/attention_wgmma.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/fp4_gemm_layout.h"
#include "engine/cuda/fp8_gemm.h"
#include "engine/cuda/grouped_fp8_gemm.h"
#include "engine/cuda/indexer_gemm.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/moe_gemm.h"
#include "engine/cuda/route_keys.h"
#include "engine/cuda/swiglu.h"
#include "engine/cuda/wgmma_runs.h"
#endif

namespace agentrt::engine {
namespace {

#ifndef AGENTRT_HAVE_CUDA
TEST(CudaKernels, MatchTheCpuEngine) { GTEST_SKIP() << testing::cuda_skip_reason(); }
#else

using cuda::DeviceBuffer;
using testing::download;
using testing::randn;
using testing::upload;

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = testing::cuda_skip_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

TEST_F(CudaKernels, TopKMatchesIndexerSelectWithTies) {
  std::mt19937 rng(3);
  // Rows with few (all taken), many, and many tied entries; scores via indexer_scores on the CPU
  // side are replaced by quantised random values so ties are common. The last two rows (16K and
  // 16K + 5 entries, more than one per thread of the block) take scores of either sign with
  // fewer ties: the last one normal values rounded to 1/64. Top 37 and the checkpoint's 512.
  const std::vector<int64_t> visible = {5, 37, 38, 1000, 3001, 16384, 16389};
  const int64_t n = int64_t(visible.size()), stride = 16389;
  std::vector<float> scores(n * stride, 0.0f);
  std::vector<cuda::LayerRow> rows(n);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t t = 0; t < n; ++t) {
    rows[t].visible = int32_t(visible[t]);
    for (int64_t s = 0; s < visible[t]; ++s)
      scores[t * stride + s] = t < 5    ? float(int(rng() % 7)) - 3
                               : t == 5 ? float(int(rng() % 4001)) - 2000
                                        : std::round(normal(rng) * 64.0f) / 64.0f;
  }
  auto d_scores = upload(scores), d_rows = upload(rows);
  for (const int64_t topk : {37, 512}) {
    DeviceBuffer chosen(n * topk * 4), n_chosen(n * 4);
    cuda::select_topk(d_scores.as<float>(), stride, d_rows.as<cuda::LayerRow>(), n, topk,
                      chosen.as<int32_t>(), n_chosen.as<int32_t>(), nullptr);
    const auto got = download<int32_t>(chosen, n * topk);
    const auto got_n = download<int32_t>(n_chosen, n);
    for (int64_t t = 0; t < n; ++t) {
      // Ranked with indexer_select's comparator (the ranking depends on the scores alone).
      std::vector<int64_t> order(visible[t]);
      for (int64_t s = 0; s < visible[t]; ++s) order[s] = s;
      const float* sc = scores.data() + t * stride;
      std::vector<int64_t> want;
      if (visible[t] <= topk) {
        want = order;
      } else {
        std::partial_sort(
            order.begin(), order.begin() + topk, order.end(),
            [&](int64_t a, int64_t b) { return sc[a] != sc[b] ? sc[a] > sc[b] : a < b; });
        want.assign(order.begin(), order.begin() + topk);
        std::sort(want.begin(), want.end());
      }
      ASSERT_EQ(got_n[t], int32_t(want.size())) << "top " << topk << " row " << t;
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(got[t * topk + i], want[i]) << "top " << topk << " row " << t << " slot " << i;
    }
  }
}

// The streamed experts' routing orders biased scores by choice_key: for every pair of numbers
// the keys compare as the floats do (so -0 and +0 tie, and ties go to the lower index as in the
// CPU's comparator); NaN sits below every number and above a chosen expert (0). No GPU needed.
TEST(CudaRouteKeys, OrderAsTheCpuComparator) {
  std::mt19937 rng(9);
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::denorm_min(),
                          -std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::lowest(),
                          std::nextafter(1.0f, 2.0f)};
  for (float x : randn(200, rng, 3.0f)) v.push_back(x);
  for (float a : v)
    for (float b : v) {
      ASSERT_EQ(a > b, cuda::choice_key(a) > cuda::choice_key(b)) << a << " vs " << b;
      ASSERT_EQ(a == b, cuda::choice_key(a) == cuda::choice_key(b)) << a << " vs " << b;
    }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(cuda::choice_key(nan), 1u);
  EXPECT_EQ(cuda::choice_key(-nan), 1u);
  for (float a : v) EXPECT_GT(cuda::choice_key(a), 1u) << a;
}

// route_rows against the CPU's route() (engine/moe.cc) on logits given straight to both (the
// CPU's router is an identity matrix): 256 experts and more, each score function, rows whose
// logits repeat (ties go to the lower index), -0 beside +0 (equal), and hash routing. The
// streamed experts' own routing is checked against route_rows (RoutedExpertsRoutingThemselves).
void routing_case(int64_t E, int64_t k, ScoreFunc func, bool hash, uint32_t seed) {
  SCOPED_TRACE(::testing::Message()
               << E << " experts, top " << k << ", score " << int(func) << (hash ? ", hash" : ""));
  std::mt19937 rng(seed);
  const int64_t n = 7, vocab = 50;
  std::vector<float> logits = randn(n * E, rng, 2.0f);
  for (int64_t e = 0; e < E; ++e) logits[1 * E + e] = float(int(rng() % 5)) * 0.25f;  // ties
  for (int64_t e = 0; e < E; ++e) logits[2 * E + e] = logits[2 * E + e % 3];  // repeats of 3
  for (int64_t e = 0; e < E; ++e) logits[3 * E + e] = e % 2 ? 0.0f : -0.0f;   // all equal
  std::vector<float> bias = randn(E, rng, 0.1f);
  if (func == ScoreFunc::softmax || func == ScoreFunc::sigmoid)
    for (int64_t e = 0; e < E; ++e) bias[e] = e % 4 ? 0.0f : -0.0f;  // ties survive the bias
  else
    for (int64_t e = 0; e < E; ++e) bias[e] = (e % 5 == 0) ? 0.0f : bias[e];
  std::vector<int32_t> tokens(n), tid2eid(vocab * k);
  for (auto& t : tokens) t = int32_t(rng() % vocab);
  for (auto& e : tid2eid) e = int32_t(rng() % E);

  ForwardConfig c;
  c.hidden = E;
  c.experts = E;
  c.experts_per_token = k;
  c.score_func = func;
  c.routed_scaling = 2.5f;
  ForwardLayer layer;
  layer.router = hash ? RouterKind::hash : RouterKind::topk;
  std::vector<float> identity(E * E, 0.0f);
  for (int64_t e = 0; e < E; ++e) identity[e * E + e] = 1.0f;
  MoeWeights w;
  w.gate = WeightMatrix{WeightType::f32, E, E, identity.data()};
  w.bias = bias;
  w.tid2eid = tid2eid;
  const Routing want = route(c, layer, w, logits.data(), tokens, Serial());

  auto d_logits = upload(logits), d_bias = upload(bias), d_tokens = upload(tokens),
       d_tid2eid = upload(tid2eid);
  DeviceBuffer chosen(n * k * 4), weights(n * k * 4);
  cuda::route_rows(d_logits.as<float>(), d_tokens.as<int32_t>(),
                   hash ? d_tid2eid.as<int32_t>() : nullptr, d_bias.as<float>(), n, E, k, func,
                   c.routed_scaling, chosen.as<int32_t>(), weights.as<float>(), nullptr);
  const auto got = download<int32_t>(chosen, n * k);
  const auto got_w = download<float>(weights, n * k);
  for (int64_t i = 0; i < n * k; ++i) {
    ASSERT_EQ(got[i], want.experts[i]) << "row " << i / k << " choice " << i % k;
    EXPECT_NEAR(got_w[i], want.weights[i], 1e-5 * std::abs(want.weights[i]) + 1e-7)
        << "row " << i / k << " choice " << i % k;
  }
}

TEST_F(CudaKernels, RoutingMatchesTheCpu) {
  routing_case(256, 6, ScoreFunc::sqrtsoftplus, false, 1);  // V4's router
  routing_case(256, 6, ScoreFunc::sqrtsoftplus, true, 2);
  routing_case(9, 6, ScoreFunc::softmax, false, 3);
  routing_case(64, 8, ScoreFunc::sigmoid, false, 4);
  routing_case(255, 32, ScoreFunc::sqrtsoftplus, false, 5);
  routing_case(300, 6, ScoreFunc::sqrtsoftplus, false, 6);
}

void indexer_scores_case(int64_t heads, int64_t dim, int64_t n);

// Small shapes go to the per-block kernel, head_dim 128 with at most 64 heads (the checkpoint's
// shape) to the warp-per-entry kernel; both checked against the GEMM, for many rows and for one,
// and with the rows that see few entries left unscored.
TEST_F(CudaKernels, IndexerScoresByGemmMatchTheKernel) {
  indexer_scores_case(6, 40, 70);
  indexer_scores_case(64, 128, 70);
  indexer_scores_case(64, 128, 1);
  indexer_scores_case(37, 128, 5);
}

void indexer_scores_case(int64_t heads, int64_t dim, int64_t n) {
  SCOPED_TRACE("heads " + std::to_string(heads) + " dim " + std::to_string(dim) + " rows " +
               std::to_string(n));
  std::mt19937 rng(4);
  const int64_t entries = 300, stride = 301;
  const auto q = randn(n * heads * dim, rng), w = randn(n * heads, rng),
             ent = randn(entries * dim, rng);
  auto d_q = upload(q), d_w = upload(w), d_ent = upload(ent);
  std::vector<cuda::LayerRow> rows(n);
  int64_t max_visible = 0;
  for (int64_t t = 0; t < n; ++t) {
    rows[t].idx_entries = d_ent.as<float>();
    rows[t].visible = int32_t(n == 1 ? entries : (t * 37) % (entries + 1));
    max_visible = std::max<int64_t>(max_visible, rows[t].visible);
  }
  auto d_rows = upload(rows);
  std::vector<float> init(n * stride, -7.0f);  // entries a row does not see stay untouched
  auto want = upload(init), got = upload(init);
  cuda::indexer_scores(d_q.as<float>(), d_w.as<float>(), 0.4f, d_rows.as<cuda::LayerRow>(), n,
                       heads, dim, max_visible, want.as<float>(), stride, nullptr);
  cuda::IndexerScoresGemm gemm(int64_t(heads) * max_visible * 4 * 16);  // slices of 16 rows
  gemm.run(d_q.as<float>(), d_w.as<float>(), 0.4f, d_rows.as<cuda::LayerRow>(), n, heads, dim,
           d_ent.as<float>(), max_visible, got.as<float>(), stride, nullptr);
  const auto a = download<float>(want, n * stride), b = download<float>(got, n * stride);
  for (int64_t i = 0; i < n * stride; ++i)
    ASSERT_NEAR(b[i], a[i], 1e-4f * (1.0f + std::fabs(a[i])))
        << "row " << i / stride << " entry " << i % stride;
  // Rows that see at most `unscored` entries get no scores (select_topk takes them all); the
  // others the same values as before.
  const int64_t unscored = 150;
  auto part = upload(init);
  cuda::indexer_scores(d_q.as<float>(), d_w.as<float>(), 0.4f, d_rows.as<cuda::LayerRow>(), n,
                       heads, dim, max_visible, part.as<float>(), stride, nullptr, unscored);
  const auto c = download<float>(part, n * stride);
  for (int64_t i = 0; i < n * stride; ++i) {
    const bool skipped = rows[i / stride].visible <= unscored;
    ASSERT_EQ(c[i], skipped ? -7.0f : a[i]) << "row " << i / stride << " entry " << i % stride;
  }
}

// The key list every attention kernel walks (no GPU needed): the window up to the position,
// then the chosen entries (CSA), all visible ones (HCA) or none.
TEST(AttentionKeys, WindowThenChosenOrVisibleEntries) {
  std::vector<float> kv(40 * 2), ent(10 * 2);
  cuda::LayerRow row;
  row.kv = kv.data();
  row.comp_entries = ent.data();
  row.pos = 12;
  row.visible = 3;
  const std::vector<int32_t> chosen = {9, 9, 9, 7, 2, 0}, n_chosen = {9, 2};  // topk 3, row 1
  const cuda::KeyList csa = cuda::row_keys(row, 1, 5, false, chosen.data(), n_chosen.data(), 3);
  EXPECT_EQ(csa.n_keys(), 5 + 2);
  EXPECT_EQ(csa.key(0, 2), kv.data() + 8 * 2);  // positions 8 .. 12
  EXPECT_EQ(csa.key(4, 2), kv.data() + 12 * 2);
  EXPECT_EQ(csa.key(5, 2), ent.data() + 7 * 2);
  EXPECT_EQ(csa.key(6, 2), ent.data() + 2 * 2);
  const cuda::KeyList hca = cuda::row_keys(row, 1, 20, true, nullptr, nullptr, 3);
  EXPECT_EQ(hca.n_keys(), 13 + 3);  // the window starts at position 0
  EXPECT_EQ(hca.key(0, 2), kv.data());
  EXPECT_EQ(hca.key(15, 2), ent.data() + 2 * 2);
  EXPECT_EQ(cuda::row_keys(row, 1, 5, false, nullptr, nullptr, 3).n_keys(), 5);  // sliding only
}

enum class AttentionKernel { per_head, plain, by_row };
void hyper_connection_case(int64_t H, int64_t n, cublasHandle_t blas);
void attention_case(int64_t hd, AttentionKernel kernel, int64_t heads);

TEST_F(CudaKernels, AttentionMatchesAttendReference) {
  for (const int64_t hd : {int64_t(72), int64_t(512), int64_t(30)})  // fast x2, plain fallback
    for (const auto kernel : {AttentionKernel::per_head, AttentionKernel::plain})
      attention_case(hd, kernel, 3);
  // The many-rows kernel: heads in groups of 8, 4 (12 heads) and 1 (3 heads).
  for (const int64_t hd : {int64_t(72), int64_t(256), int64_t(512)})
    for (const int64_t heads : {int64_t(8), int64_t(12), int64_t(3)})
      attention_case(hd, AttentionKernel::by_row, heads);
}

// Rows of one sequence at positions `pos` over `positions` KV rows and `entries` compressed
// entries: row t sees min(entries, pos / 4) entries and chooses min(that, max_chosen) of them
// (CSA); HCA reads them all. The device copies and the CPU's attend for any (row, head).
struct AttentionInputs {
  int64_t hd, heads, window, topk;
  std::vector<int64_t> pos;
  std::vector<float> kv, ent, q, sinks;
  std::vector<cuda::LayerRow> rows;
  std::vector<int32_t> chosen, n_chosen;
  DeviceBuffer d_kv, d_ent, d_q, d_sinks, d_rows, d_chosen, d_nc;

  AttentionInputs(int64_t hd_, int64_t heads_, int64_t window_, int64_t topk_, int64_t max_chosen,
                  int64_t positions, int64_t entries, std::vector<int64_t> pos_, float q_sd,
                  uint32_t seed)
      : hd(hd_), heads(heads_), window(window_), topk(topk_), pos(std::move(pos_)) {
    std::mt19937 rng(seed);
    const int64_t n = rows_count();
    kv = randn(positions * hd, rng), ent = randn(entries * hd, rng);
    q = randn(n * heads * hd, rng, q_sd), sinks = randn(heads, rng);
    d_kv = upload(kv), d_ent = upload(ent), d_q = upload(q), d_sinks = upload(sinks);
    rows.resize(n);
    chosen.assign(n * topk, 0);
    n_chosen.assign(n, 0);
    for (int64_t t = 0; t < n; ++t) {
      rows[t].kv = d_kv.as<float>();
      rows[t].comp_entries = d_ent.as<float>();
      rows[t].pos = pos[t];
      rows[t].visible = int32_t(std::min<int64_t>(entries, pos[t] / 4));
      n_chosen[t] = int32_t(std::min<int64_t>(rows[t].visible, max_chosen));
      for (int i = 0; i < n_chosen[t]; ++i)
        chosen[t * topk + i] = int32_t((i * 7 + t) % rows[t].visible);
    }
    d_rows = upload(rows), d_chosen = upload(chosen), d_nc = upload(n_chosen);
  }
  int64_t rows_count() const { return int64_t(pos.size()); }
  const int32_t* chosen_on_device(bool csa) const { return csa ? d_chosen.as<int32_t>() : nullptr; }
  const int32_t* n_chosen_on_device(bool csa) const { return csa ? d_nc.as<int32_t>() : nullptr; }
  // The relative L2 error of got's (row, head) against the CPU's attend.
  double error(const float* got, int64_t t, int64_t h, bool csa) const {
    std::vector<const float*> keys;
    for (int64_t p = std::max<int64_t>(0, pos[t] - window + 1); p <= pos[t]; ++p)
      keys.push_back(kv.data() + p * hd);
    const int64_t n_ent = csa ? n_chosen[t] : rows[t].visible;
    for (int i = 0; i < n_ent; ++i)
      keys.push_back(ent.data() + (csa ? chosen[t * topk + i] : i) * hd);
    std::vector<float> want(hd);
    attend_reference(q.data() + (t * heads + h) * hd, hd, 1.0f / std::sqrt(float(hd)), sinks[h],
                     keys.data(), int64_t(keys.size()), want.data());
    return testing::rel_l2(got + (t * heads + h) * hd, want.data(), hd);
  }
};

void attention_case(int64_t hd, AttentionKernel kernel, int64_t heads) {
  const int64_t window = 9, topk = 6, entries = 10;
  const AttentionInputs in(hd, heads, window, topk, 4, 40, entries, {0, 5, 39, 38, 17, 1, 12}, 1.0f,
                           5);
  const int64_t n = in.rows_count();
  DeviceBuffer out(n * heads * hd * 4);
  for (bool csa : {true, false}) {
    const int32_t* c = in.chosen_on_device(csa);
    const int32_t* nc = in.n_chosen_on_device(csa);
    const auto* r = in.d_rows.as<cuda::LayerRow>();
    if (kernel == AttentionKernel::by_row)
      cuda::attend_rows_by_row(in.d_q.as<float>(), r, n, heads, hd, window, in.d_sinks.as<float>(),
                               !csa, c, nc, topk, out.as<float>(), nullptr);
    else
      (kernel == AttentionKernel::per_head ? cuda::attend_rows : cuda::attend_rows_reference)(
          in.d_q.as<float>(), r, n, heads, hd, window, in.d_sinks.as<float>(), !csa, c, nc, topk,
          window + entries, out.as<float>(), nullptr);
    const auto got = download<float>(out, n * heads * hd);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < heads; ++h)
        EXPECT_LE(in.error(got.data(), t, h, csa), 1e-5)
            << (csa ? "csa" : "hca") << " kernel " << int(kernel) << " head_dim " << hd << " heads "
            << heads << " row " << t << " head " << h;
  }
}

TEST_F(CudaKernels, HyperConnectionMatchesCpu) {
  // A few rows (one block per output and slice), then many (one block per row); the split pre
  // kernel (hidden <= 4096) for one decode row at the checkpoint's width, the plain one past it.
  for (const auto& [H, n] : {std::pair<int64_t, int64_t>{67, 3}, {96, 260}, {4096, 1}, {4100, 2}})
    hyper_connection_case(H, n, nullptr);
  // Many rows with a cuBLAS handle: the projection as one GEMM (both pre kernels after it).
  cublasHandle_t blas = nullptr;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  for (const auto& [H, n] : {std::pair<int64_t, int64_t>{96, 260}, {4100, 300}, {1024, 257}})
    hyper_connection_case(H, n, blas);
  cublasDestroy(blas);
}

// The fused decode step (post step of the sublayer before, projection, pre step in one launch)
// against hyper_post then hyper_pre: streams, x and the mix; head and body, with and without a
// pending block output, one row and several, launched twice (its counters reset themselves).
// The cluster kernel (hyper_fused_cluster: 8 blocks a row, partial sums through distributed
// shared memory) the same way, where its shapes allow.
TEST_F(CudaKernels, FusedHyperStepMatchesPostThenPre) {
  std::mt19937 rng(10);
  const int64_t hc = 4, mw = cuda::hyper_mix_width(hc);
  for (const auto& [H, n] :
       {std::pair<int64_t, int64_t>{4096, 1}, {256, 3}, {4096, 5}, {2048, 2}, {1024, 3}})
    for (bool cluster : {false, true})
      for (bool head : {false, true})
        for (bool post : {true, false}) {
          if (cluster && !cuda::hyper_cluster_supported(n, hc, H)) continue;
          SCOPED_TRACE("hidden " + std::to_string(H) + " rows " + std::to_string(n) +
                       (cluster ? " cluster" : "") + (head ? " head" : " body") +
                       (post ? " after a block" : ""));
          ASSERT_TRUE(cuda::hyper_fused_supported(n, hc, H));
          const int64_t outputs = head ? hc : (2 + hc) * hc;
          const testing::RandomHyperCase r(outputs, hc, H, n, head, rng);
          testing::HyperCaseOnDevice d(r, n, mw, rng);
          const cuda::HyperDevice& w = d.w;
          auto &s_want = d.s_want, &s_got = d.s_got, &m_want = d.m_want, &m_got = d.m_got;
          const auto &d_y = d.y, &d_norm = d.norm;
          DeviceBuffer x_want(n * H * 4), x_got(n * H * 4),
              projected(cuda::hyper_projected_floats(n, hc) * 4),
              partial(cuda::hyper_fused_scratch_floats(n, hc, H) * 4), arrived(n * 4);
          cuda::zero_device(arrived.get(), arrived.bytes());
          if (post)
            cuda::hyper_post(m_want.as<float>(), d_y.as<float>(), n, hc, H, s_want.as<float>(),
                             nullptr);
          cuda::hyper_pre(w, s_want.as<float>(), n, hc, H, 20, 1e-6f, 1e-6f, d_norm.as<float>(),
                          head, head ? nullptr : m_want.as<float>(), x_want.as<float>(),
                          projected.as<float>(), nullptr);
          auto fused = [&](const float* block_out) {
            if (cluster)
              cuda::hyper_fused_cluster(w, block_out, s_got.as<float>(), n, hc, H, 20, 1e-6f, 1e-6f,
                                        d_norm.as<float>(), head, m_got.as<float>(),
                                        x_got.as<float>(), nullptr);
            else
              cuda::hyper_fused(w, block_out, s_got.as<float>(), n, hc, H, 20, 1e-6f, 1e-6f,
                                d_norm.as<float>(), head, m_got.as<float>(), x_got.as<float>(),
                                partial.as<float>(), arrived.as<unsigned>(), nullptr);
          };
          fused(post ? d_y.as<float>() : nullptr);
          const auto sw = download<float>(s_want, n * hc * H),
                     sg = download<float>(s_got, n * hc * H);
          const auto xw = download<float>(x_want, n * H), xg = download<float>(x_got, n * H);
          const auto mwant = download<float>(m_want, n * mw), mgot = download<float>(m_got, n * mw);
          for (int64_t t = 0; t < n; ++t) {
            EXPECT_LE(testing::rel_l2(sg.data() + t * hc * H, sw.data() + t * hc * H, hc * H), 1e-6)
                << "streams of row " << t;
            EXPECT_LE(testing::rel_l2(xg.data() + t * H, xw.data() + t * H, H), 1e-5)
                << "row " << t;
            for (int64_t i = 0; i < mw; ++i)
              EXPECT_NEAR(mgot[t * mw + i], mwant[t * mw + i], 1e-5) << "row " << t << " mix " << i;
          }
          // Again from the fused result: the arrival counters are back at zero.
          fused(nullptr);
          const auto x2 = download<float>(x_got, n * H);
          for (int64_t t = 0; t < n; ++t)
            EXPECT_LE(testing::rel_l2(x2.data() + t * H, xw.data() + t * H, H), 1e-5)
                << "second launch, row " << t;
        }
}

void hyper_connection_case(int64_t H, int64_t n, cublasHandle_t blas) {
  std::mt19937 rng(9);
  const int64_t hc = 4, mixn = (2 + hc) * hc;
  HyperWeights w{randn(mixn * hc * H, rng, 0.05f), randn(mixn, rng, 0.5f), randn(3, rng, 0.3f)};
  for (auto& s : w.scale) s += 1.0f;
  const auto streams = randn(n * hc * H, rng), norm = randn(H, rng, 0.1f);
  auto d_fn = upload(w.fn), d_base = upload(w.base), d_scale = upload(w.scale);
  auto d_streams = upload(streams), d_norm = upload(norm);
  DeviceBuffer mix(n * cuda::hyper_mix_width(hc) * 4), x(n * H * 4),
      projected(cuda::hyper_projected_floats(n, hc) * 4);
  cuda::hyper_pre({d_fn.as<float>(), d_base.as<float>(), d_scale.as<float>()},
                  d_streams.as<float>(), n, hc, H, 20, 1e-6f, 1e-6f, d_norm.as<float>(), false,
                  mix.as<float>(), x.as<float>(), projected.as<float>(), nullptr, blas);
  const auto got_x = download<float>(x, n * H);
  const auto got_mix = download<float>(mix, n * cuda::hyper_mix_width(hc));
  for (int64_t t = 0; t < n; ++t) {
    HyperMix m;
    hyper_mix(w, streams.data() + t * hc * H, hc, H, 20, 1e-6f, 1e-6f, m);
    std::vector<float> want(H);
    hyper_collapse(m.pre, streams.data() + t * hc * H, hc, H, want.data());
    rms_norm(want.data(), norm.data(), H, 1e-6f, want.data());
    EXPECT_LE(testing::rel_l2(got_x.data() + t * H, want.data(), H), 1e-5)
        << "hidden " << H << " rows " << n << " row " << t << (blas ? " (GEMM)" : "");
    const float* gm = got_mix.data() + t * cuda::hyper_mix_width(hc);
    for (int64_t i = 0; i < hc * hc; ++i) EXPECT_NEAR(gm[2 * hc + i], m.comb[i], 1e-5);
    for (int64_t i = 0; i < hc; ++i) EXPECT_NEAR(gm[hc + i], m.post[i], 1e-5);
  }
}

struct ExpertShape {
  int64_t experts = 5, k = 2, hidden = 96, inter = 64;
};

// Routed experts with MXFP4 weights (quantised on the host the way the checkpoint writer does)
// against the CPU's swiglu_expert, through the CUDA-core path (gemm = nullptr), tensor cores, or
// for one row the streamed kernels (directly, with a capped grid, when stream_blocks > 0).
// The routed experts of one row as GemmPrecision::fp8 computes them (moe_fp8.cu): x and each
// expert's SwiGLU quantised to e4m3 per 128 columns, the weights exact, products in float64.
std::vector<float> fp8_experts_row(const std::vector<ExpertWeights>& experts, const int32_t* chosen,
                                   const float* weights, int64_t k, const float* x, int64_t H,
                                   int64_t inter, float limit) {
  const std::vector<double> xq = testing::e4m3_block_values(x, H);
  std::vector<double> y(H, 0.0);
  std::vector<float> row(std::max(H, inter)), act(inter);
  auto dot = [&](const WeightMatrix& w, int64_t r, const auto& v) {
    decode_weight_row(w, r, row.data());
    double s = 0;
    for (int64_t c = 0; c < w.cols; ++c) s += double(row[c]) * v[c];
    return s;
  };
  for (int64_t j = 0; j < k; ++j) {
    const ExpertWeights& e = experts[chosen[j]];
    for (int64_t i = 0; i < inter; ++i)
      act[i] = cuda::swiglu_weighted(float(dot(e.w1, i, xq)), float(dot(e.w3, i, xq)), limit,
                                     weights[j]);
    const std::vector<double> aq = testing::e4m3_block_values(act.data(), inter);
    for (int64_t d = 0; d < H; ++d) y[d] += dot(e.w2, d, aq);
  }
  return std::vector<float>(y.begin(), y.end());
}

// How check_routed_experts's rows find their experts: given, or routed from random logits by the
// streamed kernels themselves (streamed_experts_routed; top-k of the biased scores or hash).
enum class RowRouting { given, top_k, hash };

void check_routed_experts(int64_t n, cuda::ExpertGemm* gemm, double tolerance,
                          ExpertShape shape = {}, int stream_blocks = 0, double fp8_tolerance = 0,
                          RowRouting routing = RowRouting::given) {
  std::mt19937 rng(13);
  const int64_t E = shape.experts, k = shape.k, H = shape.hidden, inter = shape.inter;
  const float limit = 0.7f;
  std::vector<QuantizedMatrix> stored;
  std::vector<ExpertWeights> host(E);
  std::vector<std::unique_ptr<cuda::DeviceMatrix> > dev;
  auto make = [&](int64_t rows, int64_t cols) {
    const auto v = randn(rows * cols, rng, 0.2f);
    stored.push_back(quantize_mxfp4(v.data(), rows, cols));
    WeightMatrix m;
    m.type = WeightType::f4_e2m1;
    m.rows = rows;
    m.cols = cols;
    m.data = stored.back().data.data();
    m.scale = stored.back().scales.data();
    m.scale_type = ScaleType::e8m0;
    dev.push_back(std::make_unique<cuda::DeviceMatrix>(m));
    return m;
  };
  stored.reserve(3 * E);  // views point into it
  std::vector<WeightMatrix> views(3 * E);
  for (int64_t e = 0; e < E; ++e) {
    host[e].w1 = make(inter, H);
    views[e] = dev.back()->view();
    host[e].w2 = make(H, inter);
    views[E + e] = dev.back()->view();
    host[e].w3 = make(inter, H);
    views[2 * E + e] = dev.back()->view();
  }
  const auto h = randn(n * H, rng);
  std::vector<int32_t> chosen(n * k);
  std::vector<float> weights(n * k);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      chosen[t * k + j] = int32_t((t + 2 * j) % (E - 2));  // the last two experts unused
      weights[t * k + j] = 0.3f + 0.1f * float(j);
    }
  auto d_views = upload(views), d_h = upload(h), d_chosen = upload(chosen),
       d_weights = upload(weights);
  const WeightMatrix* v = d_views.as<WeightMatrix>();
  const cuda::ExpertsDevice experts{
      v, v + E, v + 2 * E, WeightType::f4_e2m1, WeightType::f4_e2m1, ScaleType::e8m0};
  if (gemm) {
    ASSERT_TRUE(gemm->applies(experts, n, inter, H, nullptr));
  }
  DeviceBuffer scratch(cuda::moe_scratch_bytes(n, k, E, inter, H));
  std::vector<float> zeros(n * H, 0.0f);
  auto out = upload(zeros);
  if (routing != RowRouting::given) {
    // route_rows (RoutingMatchesTheCpu) gives the choices the host checks against; the kernels
    // routing themselves must write the same ones and compute with them.
    const int64_t vocab = 40;
    const auto logits = randn(n * E, rng), bias = randn(E, rng, 0.1f);
    std::vector<int32_t> tokens(n), tid2eid(vocab * k);
    for (auto& t : tokens) t = int32_t(rng() % vocab);
    for (auto& e : tid2eid) e = int32_t(rng() % E);
    auto d_logits = upload(logits), d_bias = upload(bias), d_tokens = upload(tokens),
         d_tid2eid = upload(tid2eid);
    cuda::RouteInputs route;
    route.logits = d_logits.as<float>();
    route.tokens = d_tokens.as<int32_t>();
    route.tid2eid = routing == RowRouting::hash ? d_tid2eid.as<int32_t>() : nullptr;
    route.bias = d_bias.as<float>();
    route.scaling = 1.5f;
    cuda::route_rows(route.logits, route.tokens, route.tid2eid, route.bias, n, E, k, route.func,
                     route.scaling, d_chosen.as<int32_t>(), d_weights.as<float>(), nullptr);
    chosen = download<int32_t>(d_chosen, n * k);
    weights = download<float>(d_weights, n * k);
    DeviceBuffer act(n * k * inter * 4), own_chosen(n * k * 4), own_weights(n * k * 4);
    ASSERT_TRUE(cuda::streamed_experts_routed(
        route, E, own_chosen.as<int32_t>(), own_weights.as<float>(), experts, d_h.as<float>(), n, k,
        inter, H, limit, act.as<float>(), out.as<float>(), nullptr, nullptr, stream_blocks));
    const auto got_chosen = download<int32_t>(own_chosen, n * k);
    const auto got_weights = download<float>(own_weights, n * k);
    for (int64_t i = 0; i < n * k; ++i) {
      ASSERT_EQ(got_chosen[i], chosen[i]) << "row " << i / k << " choice " << i % k;
      ASSERT_EQ(got_weights[i], weights[i]) << "row " << i / k << " choice " << i % k;
    }
  } else if (stream_blocks > 0) {
    ASSERT_TRUE(cuda::streamed_experts_fit(experts, k, inter, H));
    DeviceBuffer act(n * k * inter * 4);
    cuda::streamed_experts(experts, d_chosen.as<int32_t>(), d_weights.as<float>(), d_h.as<float>(),
                           n, k, inter, H, limit, act.as<float>(), out.as<float>(), nullptr,
                           nullptr, stream_blocks);
  } else {
    cuda::routed_experts(experts, d_chosen.as<int32_t>(), d_weights.as<float>(), d_h.as<float>(), n,
                         k, E, inter, H, limit, scratch.get(), out.as<float>(), nullptr, gemm);
  }
  const auto got = download<float>(out, n * H);
  Serial serial;
  double worst = 0, worst_fp8 = 0;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> want(H, 0.0f), y(H);
    for (int64_t j = 0; j < k; ++j) {
      swiglu_expert(host[chosen[t * k + j]], limit, h.data() + t * H, 1, y.data(), serial);
      for (int64_t d = 0; d < H; ++d) want[d] += weights[t * k + j] * y[d];
    }
    const double error = testing::rel_l2(got.data() + t * H, want.data(), H);
    worst = std::max(worst, error);
    EXPECT_LE(error, tolerance) << "row " << t;
    // fp8: against the same computation's host replay, which pins down the quantisation, the
    // scale layouts and the padding rows far below e4m3's own error.
    if (fp8_tolerance > 0 && t % 7 == 0) {
      const auto q = fp8_experts_row(host, &chosen[t * k], &weights[t * k], k, h.data() + t * H, H,
                                     inter, limit);
      const double e8 = testing::rel_l2(got.data() + t * H, q.data(), H);
      worst_fp8 = std::max(worst_fp8, e8);
      EXPECT_LE(e8, fp8_tolerance) << "row " << t << " against the host's e4m3 replay";
    }
  }
  if (fp8_tolerance > 0)
    std::printf(
        "[ fp8 experts ] %lld rows: worst rel L2 %.3g against float32, %.3g against the "
        "host's e4m3 replay\n",
        (long long)n, worst, worst_fp8);
}

TEST_F(CudaKernels, RoutedExpertsMatchSwigluExpert) {
  check_routed_experts(11, nullptr, 1e-5);   // up to 64 rows: each row streamed
  check_routed_experts(100, nullptr, 1e-5);  // the grouped CUDA-core kernels
}

TEST_F(CudaKernels, StreamedExpertsOfOneRowMatchSwigluExpert) {
  // Through routed_experts (one row takes the streamed kernels), with one block per tile.
  check_routed_experts(1, nullptr, 1e-5);
  check_routed_experts(1, nullptr, 1e-5, {9, 6, 512, 256});
  // Three blocks: each loops over many tiles, so its ring of stages wraps several times.
  check_routed_experts(1, nullptr, 1e-5, {9, 6, 512, 256}, 3);
  check_routed_experts(1, nullptr, 1e-5, {5, 2, 1024, 2048}, 2);
}

// Several rows in one launch of each kernel: with 3 and 5 blocks every block's range of tasks
// crosses from one row into the next (restaging its activations), its ring wrapping as well.
TEST_F(CudaKernels, StreamedExpertsOfSeveralRowsInOneLaunch) {
  check_routed_experts(5, nullptr, 1e-5, {9, 6, 512, 256}, 3);
  check_routed_experts(4, nullptr, 1e-5, {5, 2, 1024, 2048}, 5);
}

// The up kernel's producers routing their rows themselves: one row over the whole grid, and
// rows whose block ranges cross from one row into the next (3 and 5 blocks), top-k and hash.
TEST_F(CudaKernels, RoutedExpertsRoutingThemselves) {
  check_routed_experts(1, nullptr, 1e-5, {9, 6, 512, 256}, 0, 0, RowRouting::top_k);
  check_routed_experts(5, nullptr, 1e-5, {9, 6, 512, 256}, 3, 0, RowRouting::top_k);
  check_routed_experts(4, nullptr, 1e-5, {12, 6, 256, 512}, 5, 0, RowRouting::top_k);
  check_routed_experts(6, nullptr, 1e-5, {9, 6, 512, 256}, 4, 0, RowRouting::hash);
}

TEST_F(CudaKernels, RoutedExpertsOnTensorCoresMatchSwigluExpert) {
  // 160 and 700 rows (past the tensor-core threshold); one expert per decode buffer
  // (two buffers), so the chunks alternate between them.
  const int64_t chunk_bytes = 2 * 3 * 64 * 96 * 2;
  cuda::ExpertGemm split(cuda::GemmPrecision::bf16x2, 128, chunk_bytes);
  check_routed_experts(160, &split, 1e-4);
  check_routed_experts(700, &split, 1e-4);
  // On the highest-priority work stream (CudaOptions::expert_priority_stream).
  cuda::ExpertGemm priority(cuda::GemmPrecision::bf16x2, 128, chunk_bytes, false, 2, true);
  check_routed_experts(700, &priority, 1e-4);
  cuda::ExpertGemm plain(cuda::GemmPrecision::bf16, 128, chunk_bytes);
  check_routed_experts(300, &plain, 2e-2);
  cuda::ExpertGemm f32(cuda::GemmPrecision::f32, 128);
  const cuda::ExpertsDevice none{
      nullptr, nullptr, nullptr, WeightType::f4_e2m1, WeightType::f4_e2m1, ScaleType::e8m0};
  EXPECT_FALSE(f32.applies(none, 1000, 64, 96, nullptr));
  EXPECT_FALSE(split.applies(none, 100, 64, 96, nullptr));  // too few rows
}

// GemmPrecision::fp8 (moe_fp8.cu): MXFP4 experts converted to e4m3 with 128 x 128 block scales
// (exact here), the pairs' rows and their SwiGLU quantised to e4m3 per 128 columns, one
// block-scaled FP8 GEMM per expert and matrix. Two experts per chunk, so the conversions alternate
// between both buffers; experts' pair counts not multiples of 16 (zero padding rows). Against
// the float32 experts the two e4m3 quantisations in series cost 7-10% per row (the host's replay
// of the same arithmetic measures 0.068-0.101 on these rows; the H200 0.080-0.105), so the
// check that matters is against that replay: cuBLASLt's FP8 accumulation and an occasional
// SwiGLU value rounding the other way, where a wrong scale, row or padding gives order 1.
TEST_F(CudaKernels, RoutedExpertsOnFp8GemmsMatchSwigluExpert) {
  const ExpertShape shape{9, 6, 256, 256};
  cuda::ExpertGemm fp8(cuda::GemmPrecision::fp8, 128, 2 * 2 * 3 * 256 * 256);
  check_routed_experts(300, &fp8, 0.15, shape, 0, 1e-2);
  check_routed_experts(701, &fp8, 0.15, shape, 0, 1e-2);
  const auto counts = fp8.fp8_counts();
  EXPECT_EQ(counts.experts, 2) << counts.expert_fallbacks << " passes fell back to bf16";
  // One stream for all the GEMMs (the default alternates between two).
  cuda::ExpertGemm one_stream(cuda::GemmPrecision::fp8, 128, 2 * 2 * 3 * 256 * 256, false, 1);
  check_routed_experts(300, &one_stream, 0.15, shape, 0, 1e-2);
  EXPECT_EQ(one_stream.fp8_counts().experts, 1);
  // On the highest-priority work stream (CudaOptions::expert_priority_stream).
  cuda::ExpertGemm priority(cuda::GemmPrecision::fp8, 128, 2 * 2 * 3 * 256 * 256, false, 2, true);
  check_routed_experts(701, &priority, 0.15, shape, 0, 1e-2);
  EXPECT_EQ(priority.fp8_counts().experts, 1);
  // Widths of FP4 experts that are not whole 128-column blocks take the bf16 path.
  check_routed_experts(300, &fp8, 2e-2, {9, 6, 192, 256});
  EXPECT_EQ(fp8.fp8_counts().experts, 2);
}

// The same experts through grouped_fp8_gemm.cu's two launches (ExpertGemm's fp8_grouped): the
// same quantised activations and weights as the per-expert cuBLASLt GEMMs, so the same checks;
// also a hidden width other than the intermediate one.
TEST_F(CudaKernels, RoutedExpertsOnGroupedFp8MatchSwigluExpert) {
  if (!cuda::grouped_expert_product_runs(0)) GTEST_SKIP() << "the grouped kernel needs sm_90";
  cuda::ExpertGemm grouped(cuda::GemmPrecision::fp8, 128, int64_t(1) << 30, false, 2, false,
                           1 << 20);
  check_routed_experts(300, &grouped, 0.15, {9, 6, 256, 256}, 0, 1e-2);
  check_routed_experts(701, &grouped, 0.15, {9, 6, 256, 256}, 0, 1e-2);
  check_routed_experts(701, &grouped, 0.15, {9, 6, 384, 256}, 0, 1e-2);
  EXPECT_EQ(grouped.fp8_counts().experts, 3) << grouped.fp8_counts().expert_fallbacks;
  // Row scales (CudaOptions::fp8_row_scales): against float32 with the same bound. The host's
  // replay quantises per 128 columns, so its second figure here also holds the difference
  // between the two quantisations, bounded as loosely as the first.
  cuda::ExpertGemm rows(cuda::GemmPrecision::fp8, 128, int64_t(1) << 30, false, 2, false, 1 << 20,
                        true);
  check_routed_experts(701, &rows, 0.15, {9, 6, 256, 256}, 0, 0.15);
  check_routed_experts(701, &rows, 0.15, {9, 6, 384, 256}, 0, 0.15);
  // Rows of more than 16 blocks of 128 (hidden and inter 2,176): quantised in two passes. One
  // expert a row averages nothing: 0.151 against float32 on an H100 (0.0047 against the replay).
  check_routed_experts(128, &rows, 0.2, {5, 1, 2176, 2176}, 0, 0.2);
  EXPECT_EQ(rows.fp8_counts().experts, 3) << rows.fp8_counts().expert_fallbacks;
}

// The grouped path with bf16 gate/up products (ExpertGemm::set_gate_up_bf16): the same cases,
// block and row scales. Against float32 the same bounds (a host simulation of these rows: 0.084
// mean either way); against the host's replay, which rounds the exact SwiGLU values to e4m3, a
// value within bf16's 2^-8 of a rounding boundary may take the other code: the simulation's worst
// row 0.008 (0.005 with float32 products), so 2e-2 where float32 has 1e-2.
TEST_F(CudaKernels, RoutedExpertsOnGroupedFp8WithBf16GateUpMatchSwigluExpert) {
  if (!cuda::grouped_expert_product_runs(0)) GTEST_SKIP() << "the grouped kernel needs sm_90";
  cuda::ExpertGemm grouped(cuda::GemmPrecision::fp8, 128, int64_t(1) << 30, false, 2, false,
                           1 << 20);
  grouped.set_gate_up_bf16(true);
  check_routed_experts(300, &grouped, 0.15, {9, 6, 256, 256}, 0, 2e-2);
  check_routed_experts(701, &grouped, 0.15, {9, 6, 256, 256}, 0, 2e-2);
  check_routed_experts(701, &grouped, 0.15, {9, 6, 384, 256}, 0, 2e-2);
  EXPECT_EQ(grouped.fp8_counts().experts, 3) << grouped.fp8_counts().expert_fallbacks;
  cuda::ExpertGemm rows(cuda::GemmPrecision::fp8, 128, int64_t(1) << 30, false, 2, false, 1 << 20,
                        true);
  rows.set_gate_up_bf16(true);
  check_routed_experts(701, &rows, 0.15, {9, 6, 256, 256}, 0, 0.15);
  check_routed_experts(701, &rows, 0.15, {9, 6, 384, 256}, 0, 0.15);
  check_routed_experts(128, &rows, 0.2, {5, 1, 2176, 2176}, 0, 0.2);
  EXPECT_EQ(rows.fp8_counts().experts, 3) << rows.fp8_counts().expert_fallbacks;
  // A pass in float32 after bf16 ones (the buffer sized for bf16 grows), then bf16 again.
  grouped.set_gate_up_bf16(false);
  check_routed_experts(701, &grouped, 0.15, {9, 6, 256, 256}, 0, 1e-2);
  grouped.set_gate_up_bf16(true);
  check_routed_experts(701, &grouped, 0.15, {9, 6, 256, 256}, 0, 2e-2);
}

// E FP4 experts of hidden H and width inter on the GPU, and n rows' k pairs grouped as moe.cu's
// group_kernel groups them (stably by expert, the last two experts unused), with their rows h and
// routing weights: ExpertGemm::run's inputs.
struct GroupedPairs {
  int64_t E, k, H, inter, n, P;
  std::vector<QuantizedMatrix> stored;
  std::vector<std::unique_ptr<cuda::DeviceMatrix> > dev;
  DeviceBuffer d_views, d_h, d_weights, d_order, d_active, d_seg, d_counts;
  cuda::ExpertsDevice experts;
  cuda::ExpertSegments segments, no_pairs;

  GroupedPairs(uint32_t seed, int64_t E_, int64_t k_, int64_t H_, int64_t inter_, int64_t n_)
      : E(E_), k(k_), H(H_), inter(inter_), n(n_), P(n_ * k_) {
    std::mt19937 rng(seed);
    stored.reserve(3 * E);  // the views point into it
    std::vector<WeightMatrix> views(3 * E);
    for (int m = 0; m < 3; ++m)  // w1, w2, w3
      for (int64_t e = 0; e < E; ++e) {
        const int64_t rows = m == 1 ? H : inter, cols = m == 1 ? inter : H;
        const auto v = randn(rows * cols, rng, 0.2f);
        stored.push_back(quantize_mxfp4(v.data(), rows, cols));
        const WeightMatrix w{
            WeightType::f4_e2m1, rows, cols, stored.back().data.data(), stored.back().scales.data(),
            ScaleType::e8m0,     0};
        dev.push_back(std::make_unique<cuda::DeviceMatrix>(w));
        views[m * E + e] = dev.back()->view();
      }
    d_views = upload(views);
    const WeightMatrix* v = d_views.as<WeightMatrix>();
    experts = {v, v + E, v + 2 * E, WeightType::f4_e2m1, WeightType::f4_e2m1, ScaleType::e8m0};
    std::vector<int32_t> expert_of(P), order(P), active, seg_start;
    std::vector<float> weights(P);
    for (int64_t p = 0; p < P; ++p) {
      expert_of[p] = int32_t((p / k + 2 * (p % k)) % (E - 2));
      weights[p] = 0.3f + 0.1f * float(p % k);
    }
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return expert_of[a] < expert_of[b]; });
    for (int64_t i = 0; i < P; ++i)
      if (i == 0 || expert_of[order[i]] != expert_of[order[i - 1]]) {
        active.push_back(expert_of[order[i]]);
        seg_start.push_back(int32_t(i));
      }
    const int32_t used = int32_t(active.size());
    seg_start.resize(E + 1, int32_t(P));
    d_h = upload(randn(n * H, rng));
    d_weights = upload(weights);
    d_order = upload(order);
    d_active = upload(active);
    d_seg = upload(seg_start);
    d_counts = upload(std::vector<int32_t>{used, 0});
    segments = {d_order.as<int32_t>(), d_active.as<int32_t>(), d_seg.as<int32_t>(),
                d_counts.as<int32_t>(), E};
    no_pairs = {d_order.as<int32_t>(), d_active.as<int32_t>(), d_seg.as<int32_t>(),
                d_counts.as<int32_t>() + 1, E};
  }
};

// ExpertGemm::set_pair_out_bf16, through run() itself (routed_experts combines float32 rows):
// on fp8_grouped's path run() writes pair i's row as bf16 at element i * hidden of pair_out
// and returns true; each value is the float32 pass's rounded to nearest even (the same products,
// only the down product's store differs) and the second half of the memory keeps what it held.
// Block and row scales, float32 and bf16 gate/up products. The per-expert FP8 path and a pass
// with no pairs ignore the option: float32 rows (all of them written) or none, and false.
TEST_F(CudaKernels, RoutedExpertsOnGroupedFp8WriteBf16PairRows) {
  if (!cuda::grouped_expert_product_runs(0)) GTEST_SKIP() << "the grouped kernel needs sm_90";
  const int64_t E = 9, k = 6, H = 384, inter = 256, n = 300, P = n * k;
  const float limit = 0.7f;
  const GroupedPairs pairs(17, E, k, H, inter, n);
  const cuda::ExpertsDevice& experts = pairs.experts;
  const cuda::ExpertSegments &segments = pairs.segments, &no_pairs = pairs.no_pairs;
  constexpr uint16_t kUnwritten = 0x7fc0;  // a bf16 NaN; two of them a float32 NaN
  // A pass into fresh memory of P float32 rows filled with kUnwritten: what run() returned, and
  // the memory as bf16 bits.
  auto pass = [&](cuda::ExpertGemm& gemm, const cuda::ExpertSegments& s) {
    auto pair_out = upload(std::vector<uint16_t>(2 * P * H, kUnwritten));
    const bool bf16 = gemm.run(experts, s, pairs.d_h.as<float>(), pairs.d_weights.as<float>(), k,
                               inter, H, limit, pair_out.as<float>(), nullptr);
    return std::make_pair(bf16, download<uint16_t>(pair_out, 2 * P * H));
  };
  auto as_float = [](const std::vector<uint16_t>& bits, int64_t i) {
    const uint32_t word = uint32_t(bits[2 * i]) | uint32_t(bits[2 * i + 1]) << 16;
    float f;
    std::memcpy(&f, &word, 4);
    return f;
  };
  for (const bool row_scales : {false, true})
    for (const bool gate_up_bf16 : {false, true}) {
      SCOPED_TRACE(std::string(row_scales ? "row scales" : "block scales") +
                   (gate_up_bf16 ? ", bf16 gate/up" : ""));
      cuda::ExpertGemm grouped(cuda::GemmPrecision::fp8, 128, int64_t(1) << 30, false, 2, false,
                               1 << 20, row_scales);
      ASSERT_TRUE(grouped.applies(experts, n, inter, H, nullptr));
      grouped.set_gate_up_bf16(gate_up_bf16);
      const auto [float_said_bf16, float_rows] = pass(grouped, segments);
      EXPECT_FALSE(float_said_bf16);
      grouped.set_pair_out_bf16(true);
      const auto [said_bf16, bf16_rows] = pass(grouped, segments);
      EXPECT_TRUE(said_bf16);
      int64_t unwritten = 0, differ = 0, first = -1, written_past = 0;
      for (int64_t i = 0; i < P * H; ++i) {
        const float f = as_float(float_rows, i);
        unwritten += std::isnan(f);
        if (bf16_rows[i] != float_to_bf16(f)) {
          if (first < 0) first = i;
          ++differ;
        }
      }
      for (int64_t i = P * H; i < 2 * P * H; ++i) written_past += bf16_rows[i] != kUnwritten;
      EXPECT_EQ(unwritten, 0) << "float32 values not written";
      EXPECT_EQ(differ, 0) << "bf16 values other than the float32 ones rounded: first at pair "
                           << first / H << " column " << first % H;
      EXPECT_EQ(written_past, 0) << "values written past the bf16 rows";
      // No pairs: nothing written, false.
      const auto [none_said_bf16, none_rows] = pass(grouped, no_pairs);
      EXPECT_FALSE(none_said_bf16);
      EXPECT_EQ(std::count(none_rows.begin(), none_rows.end(), kUnwritten), 2 * P * H);
      EXPECT_EQ(grouped.fp8_counts().experts, 2) << grouped.fp8_counts().expert_fallbacks;
    }
  // The per-expert FP8 path (no grouped rows): float32 rows, every one written.
  cuda::ExpertGemm per_expert(cuda::GemmPrecision::fp8, 128, int64_t(1) << 30);
  per_expert.set_pair_out_bf16(true);
  const auto [per_expert_said_bf16, per_expert_rows] = pass(per_expert, segments);
  EXPECT_FALSE(per_expert_said_bf16);
  int64_t unwritten = 0;
  for (int64_t i = 0; i < P * H; ++i) unwritten += std::isnan(as_float(per_expert_rows, i));
  EXPECT_EQ(unwritten, 0) << "float32 values not written";
}

// ExpertGemm::set_block_rows (the SwiGLU and the tokens' quantisation a block a row) and
// set_scatter_rows (each token's row quantised straight into its slots) write the pair rows of
// the warp kernels and the slot copies, bit for bit: the same codes and scales reach the same
// products. Rows of one and of two runs a thread (hidden 384 and 1,152, inter 256 and 1,152),
// float32 and bf16 gate/up products, float32 and bf16 pair rows; two passes in turn on one
// ExpertGemm (the scatter leaves the padding rows as the pass before left them).
TEST_F(CudaKernels, RoutedExpertsFromRowBlocksAndScatteredRowsWriteTheSameRows) {
  if (!cuda::grouped_expert_product_runs(0)) GTEST_SKIP() << "the grouped kernel needs sm_90";
  for (const auto& [H, inter] : {std::pair<int64_t, int64_t>{384, 256}, {1152, 1152}}) {
    const int64_t k = 6, n = 300, P = n * k;
    const GroupedPairs pairs(23, 9, k, H, inter, n);
    for (const bool gate_up_bf16 : {false, true})
      for (const bool pair_out_bf16 : {false, true}) {
        auto pass = [&](bool block_rows, bool scatter_rows) {
          cuda::ExpertGemm gemm(cuda::GemmPrecision::fp8, 128, int64_t(1) << 30, false, 2, false,
                                1 << 20, true);
          gemm.set_gate_up_bf16(gate_up_bf16);
          gemm.set_pair_out_bf16(pair_out_bf16);
          gemm.set_block_rows(block_rows);
          gemm.set_scatter_rows(scatter_rows);
          auto pair_out = upload(std::vector<float>(P * H, 0.0f));
          for (int round = 0; round < 2; ++round)
            gemm.run(pairs.experts, pairs.segments, pairs.d_h.as<float>(),
                     pairs.d_weights.as<float>(), k, inter, H, 0.7f, pair_out.as<float>(), nullptr);
          EXPECT_EQ(gemm.fp8_counts().experts, 2) << gemm.fp8_counts().expert_fallbacks;
          return download<float>(pair_out, P * H);
        };
        const auto base = pass(false, false);
        for (const auto& [block_rows, scatter_rows] :
             {std::pair{true, false}, {false, true}, {true, true}}) {
          SCOPED_TRACE("hidden " + std::to_string(H) + (gate_up_bf16 ? ", bf16 gate/up" : "") +
                       (pair_out_bf16 ? ", bf16 pairs" : "") + (block_rows ? ", block rows" : "") +
                       (scatter_rows ? ", scattered" : ""));
          const auto rows = pass(block_rows, scatter_rows);
          int64_t differ = 0, first = -1;
          for (int64_t i = 0; i < P * H; ++i)
            if (std::memcmp(&rows[i], &base[i], 4) != 0 && differ++ == 0) first = i;
          EXPECT_EQ(differ, 0) << "first at float " << first;
        }
      }
  }
}

// fp4_gemm.cu's data layout replayed on the host (no GPU needed): every thread stages its share
// of a K step, each warp loads its fragments through the ldmatrix rows of fp4_gemm_layout.h and
// multiplies them with the mma.m16n8k16 fragment layout (mma.cuh), and the accumulators land on
// the tile elements out_row/out_col name: the tile must be exactly A W^T, every element written
// once.
TEST(CudaFp4GemmLayout, FragmentsMultiplyTheTile) {
  namespace L = cuda::fp4_gemm;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> small(-8, 8);
  std::vector<double> a(L::kBM * L::kBK), w(L::kBN * L::kBK);
  for (auto& v : a) v = small(rng);
  for (auto& v : w) v = small(rng);
  const double unset = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> as(L::kBM * L::kRow, unset), bs(L::kBN * L::kRow, unset);
  for (int tid = 0; tid < L::kThreads; ++tid) {
    const L::LoaderShare s = L::loader_share(tid);
    for (int j = 0; j < 16; ++j) {
      ASSERT_TRUE(std::isnan(as[s.a_row * L::kRow + s.a_col + j])) << "thread " << tid;
      as[s.a_row * L::kRow + s.a_col + j] = a[s.a_row * L::kBK + s.a_col + j];
    }
    for (int j = 0; j < 32; ++j) {
      ASSERT_TRUE(std::isnan(bs[s.b_row * L::kRow + s.b_block * 32 + j])) << "thread " << tid;
      bs[s.b_row * L::kRow + s.b_block * 32 + j] = w[s.b_row * L::kBK + s.b_block * 32 + j];
    }
  }
  // ldmatrix.x4: lanes 8i..8i+7 address matrix i's rows; lane t gets row t / 4, columns
  // 2 (t % 4) and 2 (t % 4) + 1 of each matrix.
  using Pair = std::array<double, 2>;
  auto ldmatrix = [](const std::vector<double>& smem, auto row_of) {
    std::array<std::array<Pair, 4>, 32> r;
    for (int t = 0; t < 32; ++t)
      for (int i = 0; i < 4; ++i) {
        const int at = row_of(8 * i + t / 4) + 2 * (t % 4);
        r[t][i] = {smem[at], smem[at + 1]};
      }
    return r;
  };
  std::vector<double> c(L::kBM * L::kBN, unset);
  for (int warp = 0; warp < L::kThreads / 32; ++warp) {
    const int wm = warp / 4, wn = warp % 4;
    double acc[2][4][32][4] = {};
    for (int ks = 0; ks < L::kBK / 16; ++ks) {
      std::array<std::array<Pair, 4>, 32> af[2], bf[2];
      for (int mt = 0; mt < 2; ++mt)
        af[mt] = ldmatrix(as, [&](int lane) { return L::a_fragment_row(lane, wm, mt, ks); });
      for (int np = 0; np < 2; ++np)
        bf[np] = ldmatrix(bs, [&](int lane) { return L::b_fragment_row(lane, wn, np, ks); });
      for (int mt = 0; mt < 2; ++mt)
        for (int nt = 0; nt < 4; ++nt) {
          // The 16 x 16 A and 16 x 8 B the lanes' fragments hold (mma.cuh's layout comment).
          double am[16][16], bm[16][8];
          for (int t = 0; t < 32; ++t) {
            const int g = t / 4, q = t % 4;
            const auto& f = af[mt][t];
            for (int h = 0; h < 2; ++h) {
              am[g][2 * q + h] = f[0][h], am[g + 8][2 * q + h] = f[1][h];
              am[g][2 * q + 8 + h] = f[2][h], am[g + 8][2 * q + 8 + h] = f[3][h];
              bm[2 * q + h][g] = bf[nt / 2][t][2 * (nt % 2)][h];
              bm[2 * q + 8 + h][g] = bf[nt / 2][t][2 * (nt % 2) + 1][h];
            }
          }
          for (int t = 0; t < 32; ++t)
            for (int v = 0; v < 4; ++v) {
              const int row = t / 4 + (v / 2) * 8, col = 2 * (t % 4) + v % 2;
              for (int k = 0; k < 16; ++k) acc[mt][nt][t][v] += am[row][k] * bm[k][col];
            }
        }
    }
    for (int lane = 0; lane < 32; ++lane)
      for (int mt = 0; mt < 2; ++mt)
        for (int nt = 0; nt < 4; ++nt)
          for (int v = 0; v < 4; ++v) {
            double& out = c[L::out_row(lane, wm, mt, v) * L::kBN + L::out_col(lane, wn, nt, v)];
            ASSERT_TRUE(std::isnan(out)) << "written twice";
            out = acc[mt][nt][lane][v];
          }
  }
  for (int r = 0; r < L::kBM; ++r)
    for (int n = 0; n < L::kBN; ++n) {
      double want = 0;
      for (int k = 0; k < L::kBK; ++k) want += a[r * L::kBK + k] * w[n * L::kBK + k];
      ASSERT_EQ(c[r * L::kBN + n], want) << "row " << r << " column " << n;
    }
}

TEST_F(CudaKernels, FourBitExpertGemmMatchesSwigluExpert) {
  // fp4_gemm.cu: pairs per expert not a multiple of the 64-row tile, two gate/up column tiles
  // and two down ones per expert; plain bf16 within its rounding.
  const ExpertShape shape{9, 6, 256, 256};
  ASSERT_TRUE(cuda::ExpertGemm::fp4_gemm_fits(
      {nullptr, nullptr, nullptr, WeightType::f4_e2m1, WeightType::f4_e2m1, ScaleType::e8m0}, 256,
      256));
  cuda::ExpertGemm split(cuda::GemmPrecision::bf16x2, 128, int64_t(1) << 30, true);
  check_routed_experts(300, &split, 1e-4, shape);
  check_routed_experts(1000, &split, 1e-4, shape);
  cuda::ExpertGemm plain(cuda::GemmPrecision::bf16, 128, int64_t(1) << 30, true);
  check_routed_experts(300, &plain, 2e-2, shape);
  EXPECT_FALSE(cuda::ExpertGemm::fp4_gemm_fits(
      {nullptr, nullptr, nullptr, WeightType::f4_e2m1, WeightType::f4_e2m1, ScaleType::e8m0}, 64,
      96));
}

// Tensor-core prefill attention (attention_mma.cu) against the CPU's attend: 64 heads per block
// (64 and 128 heads), several key tiles per row (window 40 plus up to 30 entries), CSA and HCA.
void attention_mma_case(int64_t hd, int64_t heads, bool split, int channels = 256) {
  SCOPED_TRACE("head_dim " + std::to_string(hd) + " heads " + std::to_string(heads) +
               (split ? " split" : " bf16") + " channels " + std::to_string(channels));
  const int64_t window = 40, topk = 24;
  const AttentionInputs in(hd, heads, window, topk, topk, 130, 30,
                           {0, 5, 129, 128, 47, 1, 77, 100, 39}, 2.0f, 6);
  const int64_t n = in.rows_count();
  DeviceBuffer out(n * heads * hd * 4);
  for (bool csa : {true, false}) {
    cuda::attend_rows_mma(in.d_q.as<float>(), in.d_rows.as<cuda::LayerRow>(), n, heads, hd, window,
                          in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
                          in.n_chosen_on_device(csa), topk, split, out.as<float>(), nullptr, {},
                          channels);
    const auto got = download<float>(out, n * heads * hd);
    double worst = 0;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < heads; ++h) worst = std::max(worst, in.error(got.data(), t, h, csa));
    EXPECT_LE(worst, split ? 1e-4 : 2e-2) << (csa ? "csa" : "hca") << " worst rel L2 " << worst;
  }
}

// attend_rows_mma_mirrored: the rows' keys converted to bf16 once, tiles streamed from there
// (several in flight) through the same per-tile arithmetic, so the outputs must be
// attend_rows_mma's bit for bit. Rows whose windows start at 0 and rows whose earliest window
// starts later (the mirror's first KV row is not the cache's first), CSA and HCA, both precisions.
void key_mirrors_case(int64_t hd, int64_t heads, bool split, std::vector<int64_t> positions,
                      int channels = 256) {
  SCOPED_TRACE("head_dim " + std::to_string(hd) + " heads " + std::to_string(heads) +
               (split ? " split" : " bf16") + " channels " + std::to_string(channels) +
               " first position " +
               std::to_string(*std::min_element(positions.begin(), positions.end())));
  const int64_t window = 40, topk = 24, entries = 30;
  const AttentionInputs in(hd, heads, window, topk, topk, 130, entries, std::move(positions), 2.0f,
                           7);
  const int64_t n = in.rows_count();
  const int64_t kv_first =
      std::max<int64_t>(0, *std::min_element(in.pos.begin(), in.pos.end()) - window + 1);
  const int64_t kv_rows = *std::max_element(in.pos.begin(), in.pos.end()) + 1 - kv_first;
  DeviceBuffer want(n * heads * hd * 4), got(n * heads * hd * 4),
      mirror(cuda::key_mirror_bytes(hd, kv_rows, entries, split));
  for (bool csa : {true, false}) {
    cuda::attend_rows_mma(in.d_q.as<float>(), in.d_rows.as<cuda::LayerRow>(), n, heads, hd, window,
                          in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
                          in.n_chosen_on_device(csa), topk, split, want.as<float>(), nullptr, {},
                          channels);
    cuda::attend_rows_mma_mirrored(in.d_q.as<float>(), in.d_rows.as<cuda::LayerRow>(), n, heads, hd,
                                   window, in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
                                   in.n_chosen_on_device(csa), topk, split, in.d_kv.as<float>(),
                                   kv_first, kv_rows, in.d_ent.as<float>(), entries, mirror.get(),
                                   got.as<float>(), nullptr, {}, channels);
    const auto a = download<float>(want, n * heads * hd), b = download<float>(got, n * heads * hd);
    int64_t differ = 0;
    double worst = 0;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t at = (t * heads + h) * hd;
        differ += std::memcmp(a.data() + at, b.data() + at, size_t(hd) * 4) != 0;
        worst = std::max(worst, in.error(b.data(), t, h, csa));
      }
    EXPECT_EQ(differ, 0) << (csa ? "csa" : "hca") << ": (row, head) outputs not bitwise equal";
    EXPECT_LE(worst, split ? 1e-4 : 2e-2) << (csa ? "csa" : "hca") << " worst rel L2 " << worst;
  }
}

// The decode kernel takes the raw query: it must equal the head RMSNorm + RoPE kernel, the
// plain attention and the inverse RoPE, for one and several key slices (every slice of a row
// with keys, and slices with none), CSA and HCA rows, head_dim 512 / 128 / 72 (rope 64 / 64 /
// 20 channels: a float4 straddling the rope's first channel).
TEST_F(CudaKernels, DecodeAttentionMatchesNormRopeAttendUnrope) {
  for (const auto& [hd, heads, rope_dim] :
       {std::tuple<int64_t, int64_t, int>{512, 64, 64}, {128, 12, 64}, {72, 3, 22}}) {
    const AttentionInputs in(hd, heads, 9, 6, 4, 40, 10, {0, 5, 39, 38, 17, 1, 12}, 1.0f, 5);
    const int64_t n = in.rows_count();
    std::mt19937 rng(21);
    std::vector<float> inv_freq(rope_dim / 2);
    for (auto& f : inv_freq) f = 0.05f + std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
    auto d_freq = upload(inv_freq);
    auto d_pos = upload(in.pos);
    const cuda::DeviceRope rope{d_freq.as<float>(), rope_dim, 1.3f};
    const auto* r = in.d_rows.as<cuda::LayerRow>();
    for (bool csa : {true, false})
      for (int splits : {1, 2, 3, 8, 16})
        for (const cuda::DecodeAttentionShape shape :
             {cuda::DecodeAttentionShape{}, cuda::DecodeAttentionShape{4, 16},
              cuda::DecodeAttentionShape{4, 32, true}, cuda::DecodeAttentionShape{8, 8, true}}) {
          SCOPED_TRACE("head_dim " + std::to_string(hd) + (csa ? " csa" : " hca") + " splits " +
                       std::to_string(splits) + " heads a block " +
                       std::to_string(shape.heads_per_block) + (shape.cluster ? " cluster" : ""));
          DeviceBuffer q(n * heads * hd * 4), want(n * heads * hd * 4), got(n * heads * hd * 4);
          cuda::copy_device_to_device(q.as<float>(), in.d_q.as<float>(), n * heads * hd * 4);
          cuda::norm_rope_rows(q.as<float>(), nullptr, n, heads, hd, 1e-6f, d_pos.as<int64_t>(),
                               rope, nullptr, cuda::CacheField::kv, nullptr);
          cuda::attend_rows_reference(q.as<float>(), r, n, heads, hd, in.window,
                                      in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
                                      in.n_chosen_on_device(csa), in.topk, in.window + 10,
                                      want.as<float>(), nullptr);
          cuda::apply_rope(want.as<float>(), n, heads, hd, d_pos.as<int64_t>(), rope, true,
                           nullptr);
          DeviceBuffer partials(cuda::attend_decode_partial_floats(n, heads, hd, splits) * 4),
              arrived(n * heads * 4);
          cuda::zero_device(arrived.get(), arrived.bytes());
          for (int rep = 0; rep < 2; ++rep)  // the counters are back at zero after a launch
            cuda::attend_rows_decode(in.d_q.as<float>(), r, d_pos.as<int64_t>(), rope, 1e-6f, n,
                                     heads, hd, in.window, in.d_sinks.as<float>(), !csa,
                                     in.chosen_on_device(csa), in.n_chosen_on_device(csa), in.topk,
                                     splits, partials.as<float>(), arrived.as<unsigned>(),
                                     got.as<float>(), nullptr, nullptr, shape);
          const auto a = download<float>(want, n * heads * hd),
                     b = download<float>(got, n * heads * hd);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t h = 0; h < heads; ++h)
              EXPECT_LE(testing::rel_l2(b.data() + (t * heads + h) * hd,
                                        a.data() + (t * heads + h) * hd, hd),
                        1e-5)
                  << "row " << t << " head " << h;
          // With the rope's (cos, sin) from the KV row's norm_rope_rows call at the same
          // positions: the same bits.
          DeviceBuffer kv_row(n * hd * 4), table(n * (rope_dim / 2) * 8), got_t(n * heads * hd * 4);
          cuda::copy_device_to_device(kv_row.as<float>(), in.d_q.as<float>(), n * hd * 4);
          cuda::norm_rope_rows(kv_row.as<float>(), nullptr, n, 1, hd, 1e-6f, d_pos.as<int64_t>(),
                               rope, nullptr, cuda::CacheField::kv, nullptr, table.as<float2>());
          cuda::attend_rows_decode(in.d_q.as<float>(), r, d_pos.as<int64_t>(), rope, 1e-6f, n,
                                   heads, hd, in.window, in.d_sinks.as<float>(), !csa,
                                   in.chosen_on_device(csa), in.n_chosen_on_device(csa), in.topk,
                                   splits, partials.as<float>(), arrived.as<unsigned>(),
                                   got_t.as<float>(), nullptr, table.as<float2>(), shape);
          const auto c2 = download<float>(got_t, n * heads * hd);
          EXPECT_EQ(std::memcmp(b.data(), c2.data(), b.size() * 4), 0)
              << "the rope table changed the output";
        }
  }
}

TEST_F(CudaKernels, AttentionOnTensorCoresMatchesAttendReference) {
  EXPECT_FALSE(cuda::attend_rows_mma_supported(32, 512));
  EXPECT_FALSE(cuda::attend_rows_mma_supported(64, 72));
  for (const bool split : {true, false})
    for (const int channels : {256, 128}) {
      attention_mma_case(512, 64, split, channels);
      attention_mma_case(128, 128, split, channels);
      attention_mma_case(256, 64, split, channels);
    }
}

TEST_F(CudaKernels, AttentionFromMirroredKeysIsTheSameBits) {
  for (const bool split : {true, false})
    for (int64_t hd : {512, 128, 256}) {
      for (const int channels : {256, 128})
        key_mirrors_case(hd, hd == 128 ? 128 : 64, split, {0, 5, 129, 128, 47, 1, 77, 100, 39},
                         channels);
      key_mirrors_case(hd, 64, split, {100, 129, 77, 64, 90});
    }
}

// The tensor-core attention norming and rotating the raw query as it loads it (QueryNormRope)
// against norm_rope_rows' pass and then the same attention, plain and mirrored: the same values
// up to the sums of squares' order (float32 ulps before the bf16 rounding). Rope widths of 64 and
// 22 channels (a float4 holding one rotated and one plain pair), rows past a launch's first.
void query_rope_case(int64_t hd, int64_t heads, bool split, int rope_dim, int channels = 256) {
  SCOPED_TRACE("head_dim " + std::to_string(hd) + " heads " + std::to_string(heads) +
               (split ? " split" : " bf16") + " rope " + std::to_string(rope_dim) + " channels " +
               std::to_string(channels));
  const int64_t window = 40, topk = 24, entries = 30;
  // q_sd 30: the norm changes the query's scale, so a missing norm cannot pass.
  const AttentionInputs in(hd, heads, window, topk, topk, 130, entries,
                           {0, 5, 129, 128, 47, 1, 77, 100, 39}, 30.0f, 8);
  const int64_t n = in.rows_count();
  std::mt19937 rng(23);
  std::vector<float> inv_freq(rope_dim / 2);
  for (auto& f : inv_freq) f = 0.05f + std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
  auto d_freq = upload(inv_freq);
  auto d_pos = upload(in.pos);
  const cuda::DeviceRope rope{d_freq.as<float>(), rope_dim, 1.3f};
  const cuda::QueryNormRope norm{d_pos.as<int64_t>(), rope, 1e-6f};
  DeviceBuffer normed(n * heads * hd * 4), want(n * heads * hd * 4), got(n * heads * hd * 4),
      mirror(cuda::key_mirror_bytes(hd, 130, entries, split));
  cuda::copy_device_to_device(normed.as<float>(), in.d_q.as<float>(), n * heads * hd * 4);
  cuda::norm_rope_rows(normed.as<float>(), nullptr, n, heads, hd, 1e-6f, d_pos.as<int64_t>(), rope,
                       nullptr, cuda::CacheField::kv, nullptr);
  const auto* rows = in.d_rows.as<cuda::LayerRow>();
  for (bool csa : {true, false})
    for (bool mirrored : {false, true}) {
      auto attend = [&](const float* q, DeviceBuffer& out, const cuda::QueryNormRope& qn) {
        if (mirrored)
          cuda::attend_rows_mma_mirrored(
              q, rows, n, heads, hd, window, in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
              in.n_chosen_on_device(csa), topk, split, in.d_kv.as<float>(), 0, 130,
              in.d_ent.as<float>(), entries, mirror.get(), out.as<float>(), nullptr, qn, channels);
        else
          cuda::attend_rows_mma(q, rows, n, heads, hd, window, in.d_sinks.as<float>(), !csa,
                                in.chosen_on_device(csa), in.n_chosen_on_device(csa), topk, split,
                                out.as<float>(), nullptr, qn, channels);
      };
      attend(normed.as<float>(), want, {});
      // Then the output rotated back, by apply_rope or by the attention's store.
      for (const bool unrope : {false, true}) {
        cuda::QueryNormRope qn = norm;
        qn.unrope_output = unrope;
        attend(in.d_q.as<float>(), got, qn);
        if (unrope)
          cuda::apply_rope(want.as<float>(), n, heads, hd, d_pos.as<int64_t>(), rope, true,
                           nullptr);
        const auto a = download<float>(want, n * heads * hd),
                   b = download<float>(got, n * heads * hd);
        double worst = 0;
        for (int64_t t = 0; t < n; ++t)
          for (int64_t h = 0; h < heads; ++h) {
            const int64_t at = (t * heads + h) * hd;
            worst = std::max(worst, testing::rel_l2(b.data() + at, a.data() + at, hd));
          }
        EXPECT_LE(worst, split ? 1e-5 : 1e-2)
            << (csa ? "csa" : "hca") << (mirrored ? " mirrored" : "") << (unrope ? " unrope" : "")
            << " worst rel L2 " << worst;
      }
    }
  EXPECT_THROW(
      cuda::attend_rows_mma(in.d_q.as<float>(), rows, n, heads, hd, window, in.d_sinks.as<float>(),
                            true, nullptr, nullptr, topk, split, got.as<float>(), nullptr,
                            {d_pos.as<int64_t>(), {d_freq.as<float>(), 3, 1.0f}, 1e-6f}),
      std::invalid_argument);
}

TEST_F(CudaKernels, AttentionNormsAndRotatesTheRawQuery) {
  for (const bool split : {true, false}) {
    query_rope_case(512, 64, split, 64);
    query_rope_case(512, 64, split, 64, 128);
    query_rope_case(128, 128, split, 22);
    query_rope_case(256, 64, split, 64);
  }
}

// attend_rows_wgmma (attention_wgmma.cu, sm_90a) against attend_rows_mma_mirrored's plain bf16
// products (the same roundings of the query, the keys and P, added up in another order) and
// against the CPU's attend: rows of 1 to 5 tiles of 64 keys (window 128, up to 64 chosen or 170
// visible entries; partial last tiles), CSA and HCA, 64 and 128 heads, the raw query normed and
// rotated on the way in and the output rotated back, and a mirror whose first KV row is not the
// cache's first.
TEST_F(CudaKernels, AttentionOnWarpgroupMmaMatchesTheMmaKernel) {
  EXPECT_FALSE(cuda::attend_rows_wgmma_supported(32, 512));
  EXPECT_FALSE(cuda::attend_rows_wgmma_supported(64, 256));
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  if (!cuda::wgmma_kernels_run(device))
    GTEST_SKIP() << "attention_wgmma.cu needs a GPU of compute capability 9.0 (wgmma)";
  const int64_t hd = 512, window = 128, topk = 64, positions = 700, entries = 170;
  for (const int64_t heads : {64, 128})
    for (const auto& pos : {std::vector<int64_t>{0, 5, 699, 128, 300, 1, 64, 500, 127, 650},
                            std::vector<int64_t>{400, 699, 455, 520}}) {
      SCOPED_TRACE("heads " + std::to_string(heads) + " first position " +
                   std::to_string(*std::min_element(pos.begin(), pos.end())));
      const AttentionInputs in(hd, heads, window, topk, topk, positions, entries, pos, 2.0f, 9);
      const int64_t n = in.rows_count();
      const int64_t kv_first =
          std::max<int64_t>(0, *std::min_element(pos.begin(), pos.end()) - window + 1);
      const int64_t kv_rows = *std::max_element(pos.begin(), pos.end()) + 1 - kv_first;
      std::mt19937 rng(31);
      std::vector<float> inv_freq(32);
      for (auto& f : inv_freq) f = 0.05f + std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
      auto d_freq = upload(inv_freq);
      auto d_pos = upload(in.pos);
      const cuda::QueryNormRope norm{
          d_pos.as<int64_t>(), {d_freq.as<float>(), 64, 1.3f}, 1e-6f, true};
      DeviceBuffer want(n * heads * hd * 4), got(n * heads * hd * 4),
          mirror(cuda::key_mirror_bytes(hd, kv_rows, entries, false));
      const auto* rows = in.d_rows.as<cuda::LayerRow>();
      for (const bool csa : {true, false})
        for (const bool normed : {false, true}) {
          const cuda::QueryNormRope qn = normed ? norm : cuda::QueryNormRope{};
          cuda::attend_rows_mma_mirrored(
              in.d_q.as<float>(), rows, n, heads, hd, window, in.d_sinks.as<float>(), !csa,
              in.chosen_on_device(csa), in.n_chosen_on_device(csa), topk, false,
              in.d_kv.as<float>(), kv_first, kv_rows, in.d_ent.as<float>(), entries, mirror.get(),
              want.as<float>(), nullptr, qn);
          cuda::attend_rows_wgmma(in.d_q.as<float>(), rows, n, heads, hd, window,
                                  in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
                                  in.n_chosen_on_device(csa), topk, in.d_kv.as<float>(), kv_first,
                                  kv_rows, in.d_ent.as<float>(), entries, mirror.get(),
                                  got.as<float>(), nullptr, qn);
          const auto a = download<float>(want, n * heads * hd),
                     b = download<float>(got, n * heads * hd);
          // The lean kernel (CudaOptions::attention_lean) computes the same values, bit for bit;
          // its query prefetch runs 3 rows on (rows near the last have none to ask for).
          DeviceBuffer lean(n * heads * hd * 4);
          cuda::attend_rows_wgmma(in.d_q.as<float>(), rows, n, heads, hd, window,
                                  in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
                                  in.n_chosen_on_device(csa), topk, in.d_kv.as<float>(), kv_first,
                                  kv_rows, in.d_ent.as<float>(), entries, mirror.get(),
                                  lean.as<float>(), nullptr, qn, nullptr, nullptr, true, 3);
          EXPECT_EQ(download<float>(lean, n * heads * hd), b)
              << (csa ? "csa" : "hca") << (normed ? " normed" : "")
              << ": the lean kernel's outputs differ";
          double worst = 0, worst_cpu = 0;
          for (int64_t t = 0; t < n; ++t)
            for (int64_t h = 0; h < heads; ++h) {
              const int64_t at = (t * heads + h) * hd;
              worst = std::max(worst, testing::rel_l2(b.data() + at, a.data() + at, hd));
              if (!normed) worst_cpu = std::max(worst_cpu, in.error(b.data(), t, h, csa));
            }
          EXPECT_LE(worst, 5e-3) << (csa ? "csa" : "hca") << (normed ? " normed" : "")
                                 << ": worst rel L2 against the mma kernel " << worst;
          EXPECT_LE(worst_cpu, 2e-2)
              << (csa ? "csa" : "hca") << ": worst rel L2 against attend " << worst_cpu;

          // The outputs as e4m3 rows (CudaOptions::attention_fp8_out): the bytes
          // quantize_rows_e4m3 writes for the float32 outputs, rows split between the whole
          // rows' operand and the tail's as Fp8Gemm::room lays them out.
          const int64_t cols = heads * hd, blocks = cols / 128, whole = n / 2, tail = n - whole;
          const int64_t kTail = cuda::fp8_act_quant::kTailRows;
          // Zeroed rows of Fp8Gemm::room's layout: the whole rows' codes and scales, the tail's.
          struct E4m3Rows {
            DeviceBuffer q, s, tail_q, tail_s;
            cuda::fp8_act_quant::RowsOut out;
          };
          auto e4m3_rows = [&] {
            auto r = std::make_unique<E4m3Rows>(E4m3Rows{DeviceBuffer(n * cols),
                                                         DeviceBuffer(blocks * whole * 4 + 4),
                                                         DeviceBuffer(kTail * cols),
                                                         DeviceBuffer(blocks * kTail * 4),
                                                         {}});
            for (DeviceBuffer* b : {&r->q, &r->s, &r->tail_q, &r->tail_s})
              EXPECT_EQ(cudaMemset(b->get(), 0, size_t(b->bytes())), cudaSuccess);
            r->out.q = r->q.as<uint8_t>();
            r->out.scales = r->s.as<float>();
            r->out.whole = whole;
            r->out.tail_q = r->tail_q.as<uint8_t>();
            r->out.tail_scales = r->tail_s.as<float>();
            r->out.cols = cols;
            return r;
          };
          const auto want8 = e4m3_rows();
          cuda::quantize_rows_e4m3(got.as<float>(), cols, whole, cols, want8->q.as<uint8_t>(),
                                   want8->s.as<float>(), whole, nullptr);
          cuda::quantize_rows_e4m3(got.as<float>() + whole * cols, cols, tail, cols,
                                   want8->tail_q.as<uint8_t>(), want8->tail_s.as<float>(), kTail,
                                   nullptr);
          // The default kernel's and the lean kernel's.
          for (const bool lean : {false, true}) {
            const auto got8 = e4m3_rows();
            cuda::attend_rows_wgmma(in.d_q.as<float>(), rows, n, heads, hd, window,
                                    in.d_sinks.as<float>(), !csa, in.chosen_on_device(csa),
                                    in.n_chosen_on_device(csa), topk, in.d_kv.as<float>(), kv_first,
                                    kv_rows, in.d_ent.as<float>(), entries, mirror.get(), nullptr,
                                    nullptr, qn, &got8->out, nullptr, lean, 3);
            for (const auto& [mine, theirs, what] :
                 {std::tuple{&got8->q, &want8->q, "whole rows' codes"},
                  {&got8->s, &want8->s, "whole rows' scales"},
                  {&got8->tail_q, &want8->tail_q, "tail's codes"},
                  {&got8->tail_s, &want8->tail_s, "tail's scales"}}) {
              const auto x = download<uint8_t>(*mine, mine->bytes()),
                         y = download<uint8_t>(*theirs, theirs->bytes());
              EXPECT_EQ(x, y) << (csa ? "csa" : "hca") << (normed ? " normed" : "") << ": the "
                              << (lean ? "lean kernel's " : "") << what
                              << " differ from quantize_rows_e4m3's";
            }
          }

          // The query as bf16 rows (CudaOptions::query_bf16): the outputs of the float32 query
          // holding the same bf16 values, bit for bit (the kernel widens them exactly).
          std::vector<float> q_rounded(in.q.size());
          std::vector<uint16_t> q_bf16(in.q.size());
          for (size_t i = 0; i < in.q.size(); ++i) {
            const uint32_t b = cuda::float_bits(in.q[i]);
            const uint32_t r = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;  // nearest even
            q_rounded[i] = cuda::bits_float(r);
            q_bf16[i] = uint16_t(r >> 16);
          }
          auto d_qr = upload(q_rounded);
          auto d_qb = upload(q_bf16);
          DeviceBuffer from_float(n * heads * hd * 4), from_bf16(n * heads * hd * 4),
              from_bf16_lean(n * heads * hd * 4);
          for (DeviceBuffer* b : {&from_float, &from_bf16, &from_bf16_lean}) {
            const bool bf16 = b != &from_float, lean = b == &from_bf16_lean;
            cuda::attend_rows_wgmma(
                d_qr.as<float>(), rows, n, heads, hd, window, in.d_sinks.as<float>(), !csa,
                in.chosen_on_device(csa), in.n_chosen_on_device(csa), topk, in.d_kv.as<float>(),
                kv_first, kv_rows, in.d_ent.as<float>(), entries, mirror.get(), b->as<float>(),
                nullptr, qn, nullptr,
                bf16 ? reinterpret_cast<const __nv_bfloat16*>(d_qb.get()) : nullptr, lean, 3);
          }
          const auto float_out = download<float>(from_float, n * heads * hd);
          EXPECT_EQ(float_out, download<float>(from_bf16, n * heads * hd))
              << (csa ? "csa" : "hca") << (normed ? " normed" : "")
              << ": a bf16 query's outputs differ from its float32 values'";
          EXPECT_EQ(float_out, download<float>(from_bf16_lean, n * heads * hd))
              << (csa ? "csa" : "hca") << (normed ? " normed" : "")
              << ": the lean kernel's outputs of a bf16 query differ";
        }
    }
}

// The fused tensor-core indexer (indexer_mma.cu) against indexer.cu's kernel: 64 heads of 128,
// rows seeing from none to all of 1,300 entries (several 512-entry chunks, a partial last tile).
TEST_F(CudaKernels, IndexerScoresOnTensorCoresMatchTheKernel) {
  EXPECT_FALSE(cuda::indexer_scores_mma_supported(32, 128));
  const int64_t heads = 64, dim = 128, entries = 1300, stride = 1301, n = 70;
  std::mt19937 rng(8);
  const auto q = randn(n * heads * dim, rng), w = randn(n * heads, rng),
             ent = randn(entries * dim, rng);
  auto d_q = upload(q), d_w = upload(w), d_ent = upload(ent);
  std::vector<cuda::LayerRow> rows(n);
  for (int64_t t = 0; t < n; ++t) {
    rows[t].idx_entries = d_ent.as<float>();
    rows[t].visible = int32_t(t == n - 1 ? entries : (t * 97) % (entries + 1));
  }
  auto d_rows = upload(rows);
  std::vector<float> init(n * stride, -7.0f);  // entries a row does not see stay untouched
  auto want = upload(init);
  cuda::indexer_scores(d_q.as<float>(), d_w.as<float>(), 0.125f, d_rows.as<cuda::LayerRow>(), n,
                       heads, dim, entries, want.as<float>(), stride, nullptr);
  const auto a = download<float>(want, n * stride);
  for (const bool split : {true, false}) {
    auto got = upload(init);
    cuda::indexer_scores_mma(d_q.as<float>(), d_w.as<float>(), 0.125f, d_rows.as<cuda::LayerRow>(),
                             n, heads, dim, d_ent.as<float>(), entries, split, got.as<float>(),
                             stride, nullptr);
    const auto b = download<float>(got, n * stride);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t vis = rows[t].visible;
      for (int64_t e = vis; e < stride; ++e) ASSERT_EQ(b[t * stride + e], -7.0f) << "row " << t;
      if (vis == 0) continue;
      EXPECT_LE(testing::rel_l2(b.data() + t * stride, a.data() + t * stride, vis),
                split ? 1e-5 : 2e-2)
          << (split ? "split" : "bf16") << " row " << t << " of " << vis << " entries";
    }
    // From entries mirrored as bf16 (CudaOptions::key_mirrors): the same bits, the same entries
    // left untouched.
    auto mirrored = upload(init);
    DeviceBuffer mirror(cuda::key_mirror_bytes(dim, 0, entries, split));
    cuda::indexer_scores_mma_mirrored(
        d_q.as<float>(), d_w.as<float>(), 0.125f, d_rows.as<cuda::LayerRow>(), n, heads, dim,
        d_ent.as<float>(), entries, split, mirror.get(), mirrored.as<float>(), stride, nullptr);
    const auto m = download<float>(mirrored, n * stride);
    EXPECT_EQ(std::memcmp(m.data(), b.data(), size_t(n * stride) * 4), 0)
        << (split ? "split" : "bf16") << ": mirrored scores differ from indexer_scores_mma's";
  }
}

#endif

}  // namespace
}  // namespace agentrt::engine
