// The CUDA backend against the CPU engine on random checkpoints bigger than the golden fixtures
// (engine/model_init's "small" preset: 6 layers, CSA windows past the indexer's top-k, FP8
// block-scaled linears with MXFP4 or FP8 experts, and bf16): prefill, chunked prefill,
// decode steps, truncate-and-continue and decode_batch. Skips without a GPU.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

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
};

TEST_P(CudaVsCpu, PrefillChunksAndDecode) {
  const int64_t V = cpu_->vocab_size();
  auto cs = cpu_->new_sequence();
  const auto want = cs->forward(ids_, true);
  // One prefill (two 512-row slices).
  auto gs = gpu_->new_sequence();
  const auto got = gs->forward(ids_, true);
  double worst = 0;
  for (size_t p = 0; p < ids_.size(); ++p)
    worst = std::max(worst, rel_l2(&got[p * V], &want[p * V], V));
  EXPECT_LE(worst, tol_);
  std::printf("[ %s ] prefill worst rel L2 vs CPU %.3g\n", case_name({GetParam(), 0}).c_str(),
              worst);
  // Chunks of 37 (GEMM path) then decode steps (GEMV path) from a truncated state.
  gs->truncate(0);
  size_t pos = 0;
  worst = 0;
  while (pos < 400) {
    const size_t c = std::min<size_t>(37, 400 - pos);
    const auto part = gs->forward(std::span(ids_).subspan(pos, c), true);
    for (size_t i = 0; i < c; ++i)
      worst = std::max(worst, rel_l2(&part[i * V], &want[(pos + i) * V], V));
    pos += c;
  }
  for (; pos < 420; ++pos) {
    const auto one = gs->forward(std::span(ids_).subspan(pos, 1));
    worst = std::max(worst, rel_l2(one.data(), &want[pos * V], V));
  }
  EXPECT_LE(worst, tol_);
  std::printf("[ %s ] chunked + decode worst rel L2 vs CPU %.3g\n",
              case_name({GetParam(), 0}).c_str(), worst);
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
  double worst = 0;
  for (size_t step = 0; step < 6; ++step) {
    std::vector<int32_t> toks;
    for (size_t s : starts) toks.push_back(ids_[s + step]);
    const auto out = gpu_->decode_batch(ptrs, toks);
    for (size_t i = 0; i < 4; ++i)
      worst = std::max(worst, rel_l2(out[i].data(), &want[(starts[i] + step) * V], V));
  }
  EXPECT_LE(worst, tol_);
  std::printf("[ %s ] decode_batch worst rel L2 vs CPU %.3g\n", case_name({GetParam(), 0}).c_str(),
              worst);
}

INSTANTIATE_TEST_SUITE_P(Random, CudaVsCpu,
                         ::testing::Values(Case{"fp8", "fp4", "f32"}, Case{"fp8", "fp4", "bf16x2"},
                                           Case{"fp8", "fp8", "bf16x2"},
                                           Case{"bf16", "bf16", "bf16x2"}),
                         case_name);

}  // namespace
}  // namespace agentrt::engine
