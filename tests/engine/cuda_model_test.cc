// The CUDA backend against the CPU engine on random checkpoints bigger than the golden fixtures
// (engine/model_init's "small" preset: 6 layers, CSA windows past the indexer's top-k, FP8
// block-scaled linears with MXFP4 or FP8 experts, and bf16): prefill, chunked prefill,
// decode steps, truncate-and-continue and decode_batch. float32 products must match everywhere
// (1e-3); the split-bf16 ones carry ~1e-5 differences, which can flip a near-tied discrete choice
// (expert or indexer top-k) at a rare position of these random models, so they must match at 99%
// of positions with a median under 1e-4. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/model.h"
#include "engine/model_init.h"
#include "tests/engine/cuda_test_util.h"
#include "tests/engine/golden_fixture.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/cuda_model.h"
#endif

namespace agentrt::engine {
namespace {

using testing::rel_l2;

#ifdef AGENTRT_HAVE_CUDA
// Whether two options give the same bits: every logit equal.
void expect_same_logits(const std::vector<float>& got, const std::vector<float>& want,
                        const char* what, size_t step) {
  ASSERT_EQ(got.size(), want.size());
  size_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i];
  EXPECT_EQ(differ, 0u) << what << ", step " << step << ": " << differ << " logits differ";
}

// A decode batch of three rows at different positions of ids, six steps, on both models: the
// same bits row by row.
void expect_same_batch_logits(const Model& a, const Model& b, const std::vector<int32_t>& ids,
                              const char* what) {
  const size_t starts[3] = {5, 90, 160};
  std::vector<std::unique_ptr<ModelSequence>> qa, qb;
  std::vector<ModelSequence*> pa, pb;
  for (size_t st : starts) {
    qa.push_back(a.new_sequence());
    qb.push_back(b.new_sequence());
    qa.back()->forward(std::span(ids).first(st));
    qb.back()->forward(std::span(ids).first(st));
    pa.push_back(qa.back().get());
    pb.push_back(qb.back().get());
  }
  for (size_t step = 0; step < 6; ++step) {
    std::vector<int32_t> toks;
    for (size_t st : starts) toks.push_back(ids[st + step]);
    const auto oa = a.decode_batch(pa, toks), ob = b.decode_batch(pb, toks);
    for (size_t i = 0; i < 3; ++i) expect_same_logits(ob[i], oa[i], what, step);
  }
}
#endif

struct Case {
  std::string dtype, expert_dtype;
  std::string precision;  // prefill GEMMs: f32 or bf16x2
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.dtype + "_" + info.param.expert_dtype + "_" + info.param.precision;
}

class CudaVsCpu : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const std::string why = testing::cuda_skip_reason();
    if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
    const Case& c = GetParam();
    dir_ = std::filesystem::temp_directory_path() /
           ("agentrt_cuda_vs_cpu_" + c.dtype + "_" + c.expert_dtype);
    ModelInitOptions init;
    init.preset = "small";
    init.vocab_size = 3000;
    init.dtype = c.dtype;
    init.expert_dtype = c.expert_dtype;
    init.seed = 7;
    write_random_model(dir_, init);
    cpu_ = Model::load(dir_, {Device::cpu, 0});
    cuda::CudaOptions options;
    options.precision =
        c.precision == "f32" ? cuda::GemmPrecision::f32 : cuda::GemmPrecision::bf16x2;
    gpu_ = load_cuda_model(dir_, {Device::cuda}, options);
    tol_ = 1e-3;
    std::mt19937 rng(11);
    ids_.resize(600);
    for (auto& t : ids_) t = int32_t(rng() % 3000);
#endif
  }
  std::filesystem::path dir_;
  std::shared_ptr<const Model> cpu_, gpu_;
  std::vector<int32_t> ids_;
  double tol_ = 0;

  void check(std::vector<double> errors, const char* what) const {
    ASSERT_FALSE(errors.empty());
    const bool exact = GetParam().precision == "f32";
    const size_t over =
        size_t(std::count_if(errors.begin(), errors.end(), [&](double e) { return e > tol_; }));
    std::sort(errors.begin(), errors.end());
    const double median = errors[errors.size() / 2], worst = errors.back();
    std::printf("[ %s_%s_%s %s ] rel L2 vs CPU median %.3g worst %.3g, %zu of %zu over %.0e\n",
                GetParam().dtype.c_str(), GetParam().expert_dtype.c_str(),
                GetParam().precision.c_str(), what, median, worst, over, errors.size(), tol_);
    if (exact) {
      // Float32 products agree with the CPU to ~1e-6, but a discrete choice at a near tie (an
      // expert, an indexer top-k entry) can still flip at a position: the GPU machine's own build
      // (g++ 13) flipped one of 600 prefill positions (6.9e-3) where the dev box's (g++ 12)
      // flipped none. So one position in 200 may; the median stays at float32 level.
      EXPECT_LE(over, errors.size() / 200) << what;
      EXPECT_LE(median, 1e-5) << what;
    } else {
      EXPECT_LE(double(over), 0.01 * double(errors.size())) << what;
      EXPECT_LE(median, 1e-4) << what;
    }
  }
};

// The profiling option that repeats a stage says which stages there are when given another.
TEST(CudaOptions, RepeatStageMustNameAStage) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_repeat_stage";
  ModelInitOptions init;
  init.preset = "small";
  init.vocab_size = 3000;
  init.seed = 7;
  write_random_model(dir, init);
  cuda::CudaOptions options;
  options.repeat_stage = "wq_c";
  try {
    load_cuda_model(dir, {Device::cuda}, options);
    ADD_FAILURE() << "an unknown stage was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("no stage \"wq_c\" to repeat (stages: mhc,"),
              std::string::npos)
        << e.what();
  }
  options.repeat_stage = "wq_b";
  EXPECT_NO_THROW(load_cuda_model(dir, {Device::cuda}, options));
  std::filesystem::remove_all(dir);
#endif
}

// A new sequence on a retired one's caches (CudaOptions::spare_caches) computes what one on new
// caches does: the old rows (a longer prefill and decode steps, whose compressed entries and
// indexer rows lie past the new sequence's) are never read. Its caches are the retired ones (no
// allocation), and with spare_caches 0 they are not.
TEST(CudaOptions, SpareCachesGiveTheLogitsOfNewOnes) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_spare_caches";
  testing::write_small_fp8_model(dir, 9);
  std::mt19937 rng(4);
  std::vector<int32_t> ids(400);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  std::vector<std::vector<float>> logits;
  for (const int spares : {0, 1}) {
    cuda::CudaOptions options;
    options.spare_caches = spares;
    const auto gpu = load_cuda_model(dir, {Device::cuda}, options);
    {
      auto old = gpu->new_sequence();
      old->forward(std::span(ids).first(350));
      for (size_t p = 350; p < 360; ++p) old->forward(std::span(ids).subspan(p, 1));
    }
    auto fresh = gpu->new_sequence();
    std::vector<float> got = fresh->forward(std::span(ids).subspan(100, 120), true);
    for (size_t p = 220; p < 226; ++p) {
      const auto step = fresh->forward(std::span(ids).subspan(p, 1));
      got.insert(got.end(), step.begin(), step.end());
    }
    logits.push_back(std::move(got));
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  size_t differ = 0;
  for (size_t i = 0; i < logits[0].size(); ++i) differ += logits[0][i] != logits[1][i];
  EXPECT_EQ(differ, 0u) << differ << " logits differ on a retired sequence's caches";
  cuda::CudaOptions bad;
  bad.spare_caches = -1;
  EXPECT_THROW(load_cuda_model(dir, {Device::cuda}, bad), std::invalid_argument);
  std::filesystem::remove_all(dir);
#endif
}

// A prefill wanting only its last row's logits runs the last post step on that row alone (its
// streams) and the head on one row: the logits of the all-rows pass's last row, within the
// head's own rounding (400 rows: past the fused mHC path's 256).
TEST(CudaModel, PrefillOfItsLastRowMatchesTheAllRowsPass) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_last_row";
  testing::write_small_fp8_model(dir, 11);
  std::mt19937 rng(6);
  std::vector<int32_t> ids(400);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  const auto gpu = load_cuda_model(dir, {Device::cuda}, {});
  const std::vector<float> all = gpu->new_sequence()->forward(ids, true);
  const std::vector<float> last = gpu->new_sequence()->forward(ids);
  ASSERT_EQ(all.size(), 400 * last.size());
  const std::span<const float> all_last = std::span(all).last(last.size());
  float most = 0.0f, off = 0.0f;
  for (size_t i = 0; i < last.size(); ++i) {
    most = std::max(most, std::fabs(all_last[i]));
    off = std::max(off, std::fabs(last[i] - all_last[i]));
  }
  EXPECT_LE(off, 1e-3f * most);
  std::filesystem::remove_all(dir);
#endif
}

// The layers' metadata packed and uploaded after the first kernels are enqueued
// (CudaOptions::defer_layer_metadata) gives the same logits, bit for bit: two prefills of 300
// and 100 rows on one sequence, a second sequence's prefill, and decode steps (graphs, whose
// metadata is never deferred, and eager steps with graphs off).
TEST(CudaOptions, DeferredLayerMetadataGivesTheSameLogits) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_deferred_metadata";
  testing::write_small_fp8_model(dir, 12);
  std::mt19937 rng(8);
  std::vector<int32_t> ids(410);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  std::vector<std::vector<float>> logits;
  for (const bool graphs : {true, false})
    for (const bool defer : {false, true}) {
      cuda::CudaOptions options;
      options.defer_layer_metadata = defer;
      options.graphs = graphs;
      const auto gpu = load_cuda_model(dir, {Device::cuda}, options);
      auto seq = gpu->new_sequence();
      std::vector<float> got = seq->forward(std::span(ids).first(300), true);
      const auto more = seq->forward(std::span(ids).subspan(300, 100), true);
      got.insert(got.end(), more.begin(), more.end());
      for (size_t p = 400; p < 410; ++p) {
        const auto step = seq->forward(std::span(ids).subspan(p, 1));
        got.insert(got.end(), step.begin(), step.end());
      }
      const auto other = gpu->new_sequence()->forward(std::span(ids).first(200));
      got.insert(got.end(), other.begin(), other.end());
      logits.push_back(std::move(got));
    }
  for (size_t m : {1, 3}) {
    ASSERT_EQ(logits[m - 1].size(), logits[m].size());
    size_t differ = 0;
    for (size_t i = 0; i < logits[m].size(); ++i) differ += logits[m - 1][i] != logits[m][i];
    EXPECT_EQ(differ, 0u) << differ << " logits differ with the metadata deferred (graphs "
                          << (m == 1) << ")";
  }
  std::filesystem::remove_all(dir);
#endif
}

// One row's routed experts summed into a buffer of their own, added to the shared expert's by
// the next mHC boundary (CudaOptions::moe_separate_sum), and the routed down kernel's weights
// copied before the up kernel ends (moe_early_down): the same float sums, so the same bits, on
// the small model's streamed FP4 experts and grid boundaries; a batch of three too.
TEST(CudaOptions, MoeSeparateSumAndEarlyDownGiveTheSameLogits) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_moe_separate_sum";
  testing::write_small_fp8_model(dir, 9);
  auto load = [&](bool separate, bool early) {
    cuda::CudaOptions options;
    options.moe_separate_sum = separate;
    options.moe_early_down = early;
    return load_cuda_model(dir, {Device::cuda}, options);
  };
  const auto base = load(false, false);
  struct Variant {
    const char* name;
    std::shared_ptr<const Model> model;
  };
  const Variant variants[] = {{"separate sum", load(true, false)},
                              {"early down", load(false, true)},
                              {"separate sum, early down", load(true, true)}};
  const auto ids = testing::random_ids(240, 4);
  auto sb = base->new_sequence();
  std::vector<std::unique_ptr<ModelSequence>> seqs;
  const auto want = sb->forward(std::span(ids).first(200));
  for (const Variant& v : variants) {
    seqs.push_back(v.model->new_sequence());
    expect_same_logits(seqs.back()->forward(std::span(ids).first(200)), want, v.name, 0);
  }
  for (size_t p = 200; p < 232; ++p) {
    const auto one = std::span(ids).subspan(p, 1);
    const auto w = sb->forward(one);
    for (size_t i = 0; i < seqs.size(); ++i)
      expect_same_logits(seqs[i]->forward(one), w, variants[i].name, p);
  }
  // A batch of three rows (early down applies to batches too).
  expect_same_batch_logits(*base, *variants[1].model, ids, "batch row, early down");
  std::filesystem::remove_all(dir);
#endif
}

// The shared expert's products as tasks of the routed experts' streamed kernels
// (CudaOptions::shared_in_experts: 1 all three products, 2 the down product), routed by a launch
// of their own or inside the up kernel (fused_routing): decode steps of one row and a batch of
// three match the CPU engine as closely as the default path does, and differ from the default's
// bits (float32 on the CUDA cores instead of the tensor cores' f16 parts), which shows the folded
// kernels ran. The small model: FP8 shared expert (256 x 256, one 128-row scale block per two
// stages), FP4 experts.
TEST(CudaOptions, SharedInExpertsMatchesTheCpu) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_shared_in_experts";
  testing::write_small_fp8_model(dir, 12);
  const auto cpu = Model::load(dir, {Device::cpu, 0});
  const auto ids = testing::random_ids(240, 6);
  const auto want = cpu->new_sequence()->forward(ids, true);
  const int64_t V = cpu->vocab_size();
  const auto base = load_cuda_model(dir, {Device::cuda}, cuda::CudaOptions{});
  const std::pair<int, bool> modes[] = {{1, false}, {1, true}, {2, false}, {2, true}};
  for (const auto& [mode, fused] : modes) {
    cuda::CudaOptions options;
    options.shared_in_experts = mode;
    options.fused_routing = fused;
    const auto folded = load_cuda_model(dir, {Device::cuda}, options);
    auto fs = folded->new_sequence();
    auto bs = base->new_sequence();
    fs->forward(std::span(ids).first(200));
    bs->forward(std::span(ids).first(200));
    std::vector<double> errors, base_errors;
    size_t differ = 0;
    for (size_t p = 200; p < 232; ++p) {
      const auto one = std::span(ids).subspan(p, 1);
      const auto got = fs->forward(one), apart = bs->forward(one);
      errors.push_back(rel_l2(got.data(), &want[p * V], V));
      base_errors.push_back(rel_l2(apart.data(), &want[p * V], V));
      for (int64_t i = 0; i < V; ++i) differ += got[size_t(i)] != apart[size_t(i)];
    }
    // A batch of three rows at different positions.
    const size_t starts[3] = {5, 90, 160};
    std::vector<std::unique_ptr<ModelSequence>> rows;
    std::vector<ModelSequence*> ptrs;
    for (size_t st : starts) {
      rows.push_back(folded->new_sequence());
      rows.back()->forward(std::span(ids).first(st));
      ptrs.push_back(rows.back().get());
    }
    for (size_t step = 0; step < 4; ++step) {
      std::vector<int32_t> toks;
      for (size_t st : starts) toks.push_back(ids[st + step]);
      const auto out = folded->decode_batch(ptrs, toks);
      for (size_t i = 0; i < 3; ++i)
        errors.push_back(rel_l2(out[i].data(), &want[(starts[i] + step) * V], V));
    }
    std::sort(errors.begin(), errors.end());
    std::sort(base_errors.begin(), base_errors.end());
    std::printf(
        "[ shared in experts %d, fused routing %d ] rel L2 vs CPU median %.3g worst %.3g "
        "(the default path: median %.3g worst %.3g); %zu logits differ from it\n",
        mode, int(fused), errors[errors.size() / 2], errors.back(),
        base_errors[base_errors.size() / 2], base_errors.back(), differ);
    // As CudaVsCpu: float32-like, one near-tie choice flipping at most at a position.
    EXPECT_LE(errors[errors.size() / 2], 1e-4) << "mode " << mode << ", fused " << fused;
    EXPECT_LE(errors[errors.size() - 2], 1e-3) << "mode " << mode << ", fused " << fused;
    EXPECT_GT(differ, 0u) << "the folded kernels gave the default path's bits: did they run?";
  }
  std::filesystem::remove_all(dir);
#endif
}

// Decode rows routed inside the routed experts' up kernel (CudaOptions::fused_routing) make the
// same choices with the same weights as the routing kernel, so the logits are the same bits: one
// row's decode steps and a batch of three, on the small model's MXFP4 experts (the streamed
// kernels' path), hash-routed layers included.
TEST(CudaOptions, FusedRoutingGivesTheSameLogits) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_fused_routing";
  testing::write_small_fp8_model(dir, 5);
  cuda::CudaOptions options;
  options.fused_routing = false;
  const auto apart = load_cuda_model(dir, {Device::cuda}, options);
  options.fused_routing = true;
  const auto fused = load_cuda_model(dir, {Device::cuda}, options);
  std::mt19937 rng(3);
  std::vector<int32_t> ids(300);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  // One row: a prefill, then decode steps.
  auto sa = apart->new_sequence(), sf = fused->new_sequence();
  sa->forward(std::span(ids).first(200));
  sf->forward(std::span(ids).first(200));
  for (size_t p = 200; p < 216; ++p)
    expect_same_logits(sf->forward(std::span(ids).subspan(p, 1)),
                       sa->forward(std::span(ids).subspan(p, 1)), "one row", p);
  // A batch of three rows at different positions.
  expect_same_batch_logits(*apart, *fused, ids, "batch row");
  std::filesystem::remove_all(dir);
#endif
}

// One decode row's query norm folded into wq_b (CudaOptions::fused_q_norm, on by default) against
// the separate norm: layers with an indexer (wq_b and the indexer's wq_b as one set) and without
// (wq_b alone). The small model's products are below the size that takes gemv_warp_rows, so this
// checks the option's wiring and fallback (the same bits); the fused kernel itself is
// CudaGemv.WarpRowsNormedAsRmsNormThenProduct, and the V4-Flash shapes take it in the bench.
TEST(CudaOptions, FusedQNormGivesTheLogitsOfTheSeparateNorm) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_fused_q_norm";
  testing::write_small_fp8_model(dir, 8);
  cuda::CudaOptions options;
  options.fused_q_norm = false;
  const auto apart = load_cuda_model(dir, {Device::cuda}, options);
  options.fused_q_norm = true;
  const auto fused = load_cuda_model(dir, {Device::cuda}, options);
  std::mt19937 rng(4);
  std::vector<int32_t> ids(240);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  auto sa = apart->new_sequence(), sf = fused->new_sequence();
  sa->forward(std::span(ids).first(200));
  sf->forward(std::span(ids).first(200));
  for (size_t p = 200; p < 240; ++p) {
    const auto a = sa->forward(std::span(ids).subspan(p, 1));
    const auto f = sf->forward(std::span(ids).subspan(p, 1));
    ASSERT_EQ(a.size(), f.size());
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
      num += (double(a[i]) - f[i]) * (double(a[i]) - f[i]);
      den += double(a[i]) * a[i];
    }
    EXPECT_LE(std::sqrt(num / den), 1e-5) << "step " << p;
  }
  std::filesystem::remove_all(dir);
#endif
}

// The shared expert and the routed experts on disjoint SMs (CudaOptions::shared_expert_blocks)
// give the same logits, bit for bit: each block's tasks are computed the same way whatever the
// grid.
TEST(CudaOptions, SharedExpertOnItsOwnSmsGivesTheSameLogits) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_shared_expert_blocks";
  testing::write_small_fp8_model(dir, 12);
  cuda::CudaOptions options;
  const auto every = load_cuda_model(dir, {Device::cuda}, options);
  options.shared_expert_blocks = 24;
  const auto apart = load_cuda_model(dir, {Device::cuda}, options);
  std::mt19937 rng(6);
  std::vector<int32_t> ids(120);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  auto se = every->new_sequence(), sa = apart->new_sequence();
  se->forward(std::span(ids).first(100));
  sa->forward(std::span(ids).first(100));
  for (size_t p = 100; p < 120; ++p)
    EXPECT_EQ(sa->forward(std::span(ids).subspan(p, 1)), se->forward(std::span(ids).subspan(p, 1)))
        << "step " << p;
  std::filesystem::remove_all(dir);
#endif
}

// Streamed products and routed experts keeping one stage, or 64 KB, of copies in flight a block
// (CudaOptions::ring_in_flight_bytes), the first layer's weights asked into the L2 beside the
// step's first kernel (lead_prefetch_bytes), and a captured step as two graphs
// (split_step_graph), replayed steps' metadata staged on the device (staged_step_metadata),
// step graphs instantiated for device launch (graph_device_launch) and the head's first bytes
// asked into the L2 during the last layers (head_prefetch_bytes; from 100 sublayers: at the
// first layer, or after a split graph's first part) and the attention's or the MoE's side
// branch kept on the pass's stream (side_attention, side_moe) and two instances of each step
// graph launched in turn (step_graph_copies) give the same logits, bit for bit: only when work
// is asked for changes.
TEST(CudaOptions, StepSchedulingGivesTheSameLogits) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_ring_in_flight";
  testing::write_small_fp8_model(dir, 14);
  cuda::CudaOptions options;
  const auto whole = load_cuda_model(dir, {Device::cuda}, options);
  const std::vector<int32_t> ids = testing::random_ids(120, 7);
  auto sw = whole->new_sequence();
  sw->forward(std::span(ids).first(100));
  std::vector<std::vector<float>> want;
  for (size_t p = 100; p < 120; ++p) want.push_back(sw->forward(std::span(ids).subspan(p, 1)));
  struct Case {
    int64_t in_flight, lead;
    bool split, staged, device_launch;
    int64_t head = 0;  // head_prefetch_bytes
    int head_from = 1;
    bool head_last = false;
    bool side_attention = true, side_moe = true;
    int graph_copies = 1;
    int split_chains = 0;  // not the default (1), so the other cases check 0 as well
  };
  for (const Case& k :
       {Case{1, 0, false, false, false}, Case{64 << 10, 0, false, false, false},
        Case{0, 64 << 20, false, false, false}, Case{0, 0, true, false, false},
        Case{0, 0, false, true, false}, Case{0, 0, false, false, true},
        Case{0, 0, true, true, true}, Case{0, 0, false, false, false, 32 << 20, 1, false},
        Case{0, 0, false, false, false, 1 << 20, 2, true},
        Case{0, 0, true, false, false, 32 << 20, 100, false},
        Case{0, 0, false, false, false, 0, 1, false, false, true},
        Case{0, 0, false, false, false, 0, 1, false, true, false},
        Case{0, 0, false, false, false, 0, 1, false, true, true, 2},
        Case{0, 0, true, false, true, 0, 1, false, true, true, 2},
        Case{0, 0, false, false, false, 0, 1, false, true, true, 1, 1},
        Case{0, 0, false, false, false, 0, 1, false, true, true, 1, 2}}) {
    options.ring_in_flight_bytes = k.in_flight;
    options.lead_prefetch_bytes = k.lead;
    options.split_step_graph = k.split;
    options.staged_step_metadata = k.staged;
    options.graph_device_launch = k.device_launch;
    options.head_prefetch_bytes = k.head;
    options.head_prefetch_from = k.head_from;
    options.head_prefetch_evict_last = k.head_last;
    options.side_attention = k.side_attention;
    options.side_moe = k.side_moe;
    options.step_graph_copies = k.graph_copies;
    options.split_kv_chains = k.split_chains;
    const auto held = load_cuda_model(dir, {Device::cuda}, options);
    auto sh = held->new_sequence();
    sh->forward(std::span(ids).first(100));
    for (size_t p = 100; p < 120; ++p)
      EXPECT_EQ(sh->forward(std::span(ids).subspan(p, 1)), want[p - 100])
          << k.in_flight << " bytes in flight, " << k.lead << " prefetched, split " << k.split
          << ", staged " << k.staged << ", device launch " << k.device_launch << ", head " << k.head
          << " from " << k.head_from << (k.head_last ? " evict-last" : "") << ", side attention "
          << k.side_attention << ", side moe " << k.side_moe << ", graph copies " << k.graph_copies
          << ", split chains " << k.split_chains << ", step " << p;
  }
  cuda::CudaOptions bad;
  bad.warp_rows_copy_rows = 4;  // 2 or 8
  EXPECT_THROW(load_cuda_model(dir, {Device::cuda}, bad), std::invalid_argument);
  bad.warp_rows_copy_rows = 2;
  bad.split_kv_chains = 3;  // 0, 1 or 2
  EXPECT_THROW(load_cuda_model(dir, {Device::cuda}, bad), std::invalid_argument);
  std::filesystem::remove_all(dir);
#endif
}

// One decode row's attention in blocks of 4 heads and 16 keys beside wo_a's
// (CudaOptions::attention_beside_wo_a), with each head group's slices one cluster
// (attention_cluster), or both: other key slices, so float32 rounding apart.
TEST(CudaOptions, DecodeAttentionShapesKeepTheLogits) {
  const std::string why = testing::cuda_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
#ifdef AGENTRT_HAVE_CUDA
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_attention_beside";
  testing::write_small_fp8_model(dir, 13);
  auto load = [&](bool beside, bool cluster, int chunk_keys = 0, int keys_at_once = 2,
                  bool bulk = false, int slices = 8) {
    cuda::CudaOptions options;
    options.decode_attention_cluster_slices = slices;
    options.attention_beside_wo_a = beside;
    options.attention_cluster = cluster;
    options.decode_attention_chunk_keys = chunk_keys;
    options.decode_attention_keys_at_once = keys_at_once;
    options.decode_attention_bulk_keys = bulk;
    return load_cuda_model(dir, {Device::cuda}, options);
  };
  const auto plain = load(false, false);  // the attention as before the thirty-ninth session
  struct Variant {
    const char* name;
    std::shared_ptr<const Model> model;
  };
  Variant variants[] = {
      {"beside wo_a", load(true, false)},
      {"cluster", load(false, true)},
      {"cluster beside wo_a", load(true, true)},
      {"cluster beside wo_a, 3 keys a chunk", load(true, true, 3)},
      {"cluster beside wo_a, 64 keys a chunk", load(true, true, 64)},
      {"global merge, 48 keys a chunk", load(false, false, 48)},
      {"cluster beside wo_a, 4 keys at once", load(true, true, 0, 4)},
      {"cluster, 48 keys a chunk, 4 keys at once", load(false, true, 48, 4)},
      {"cluster beside wo_a, bulk copies", load(true, true, 0, 2, true)},
      {"cluster, 3 keys a chunk, bulk copies", load(false, true, 3, 4, true)},
      {"cluster beside wo_a, 48 keys a chunk, 4 at once, bulk copies",
       load(true, true, 48, 4, true)},
      {"cluster beside wo_a, 16 slices, 4 at once, bulk copies", load(true, true, 48, 4, true, 16)},
      {"cluster, 16 slices, 3 keys a chunk", load(false, true, 3, 2, false, 16)},
      {"the defaults", load_cuda_model(dir, {Device::cuda}, cuda::CudaOptions{})}};
  std::mt19937 rng(7);
  std::vector<int32_t> ids(120);
  for (auto& t : ids) t = int32_t(rng() % 3000);
  auto sp = plain->new_sequence();
  sp->forward(std::span(ids).first(100));
  std::vector<std::unique_ptr<ModelSequence>> seqs;
  for (const Variant& v : variants) {
    seqs.push_back(v.model->new_sequence());
    seqs.back()->forward(std::span(ids).first(100));
  }
  for (size_t p = 100; p < 120; ++p) {
    const auto one = std::span(ids).subspan(p, 1);
    const auto want = sp->forward(one);
    for (size_t i = 0; i < seqs.size(); ++i) {
      const auto got = seqs[i]->forward(one);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_LE(rel_l2(got.data(), want.data(), int64_t(want.size())), 1e-5)
          << variants[i].name << ", step " << p;
    }
  }
  std::filesystem::remove_all(dir);
#endif
}

TEST_P(CudaVsCpu, PrefillChunksAndDecode) {
  const int64_t V = cpu_->vocab_size();
  auto cs = cpu_->new_sequence();
  const auto want = cs->forward(ids_, true);
  // One prefill (two 512-row slices).
  auto gs = gpu_->new_sequence();
  const auto got = gs->forward(ids_, true);
  std::vector<double> errors;
  for (size_t p = 0; p < ids_.size(); ++p) errors.push_back(rel_l2(&got[p * V], &want[p * V], V));
  check(errors, "prefill");
  // Chunks of 37 (GEMM path) then decode steps (GEMV path) from a truncated state.
  gs->truncate(0);
  size_t pos = 0;
  errors.clear();
  while (pos < 400) {
    const size_t c = std::min<size_t>(37, 400 - pos);
    const auto part = gs->forward(std::span(ids_).subspan(pos, c), true);
    for (size_t i = 0; i < c; ++i) errors.push_back(rel_l2(&part[i * V], &want[(pos + i) * V], V));
    pos += c;
  }
  for (; pos < 420; ++pos) {
    const auto one = gs->forward(std::span(ids_).subspan(pos, 1));
    errors.push_back(rel_l2(one.data(), &want[pos * V], V));
  }
  check(errors, "chunked + decode");
}

TEST_P(CudaVsCpu, DecodeBatch) {
  const int64_t V = cpu_->vocab_size();
  auto cs = cpu_->new_sequence();
  const auto want = cs->forward(ids_, true);
  const size_t starts[4] = {1, 130, 257, 520};
  std::vector<std::unique_ptr<ModelSequence>> seqs;
  std::vector<ModelSequence*> ptrs;
  for (size_t s : starts) {
    seqs.push_back(gpu_->new_sequence());
    seqs.back()->forward(std::span(ids_).first(s));
    ptrs.push_back(seqs.back().get());
  }
  std::vector<double> errors;
  for (size_t step = 0; step < 6; ++step) {
    std::vector<int32_t> toks;
    for (size_t s : starts) toks.push_back(ids_[s + step]);
    const auto out = gpu_->decode_batch(ptrs, toks);
    for (size_t i = 0; i < 4; ++i)
      errors.push_back(rel_l2(out[i].data(), &want[(starts[i] + step) * V], V));
  }
  check(errors, "decode_batch");
}

INSTANTIATE_TEST_SUITE_P(
    Random, CudaVsCpu,
    // float32 prefill products only: on the device these random models turned the split-bf16
    // GEMMs' ~1e-5 differences into flipped discrete choices (indexer top-k or experts) at some
    // positions and some kernel versions (median 2e-3 then, 1.6e-5 otherwise), so they cannot pin
    // kernels down; the golden fixtures check bf16x2 against transformers instead.
    ::testing::Values(Case{"fp8", "fp4", "f32"}, Case{"fp8", "fp8", "f32"},
                      Case{"bf16", "bf16", "f32"}),
    case_name);

}  // namespace
}  // namespace agentrt::engine
