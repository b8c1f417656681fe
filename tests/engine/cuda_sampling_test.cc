// Sampling on the GPU against the host Sampler: the masked pick kernel on random logits (ties,
// non-finite values, masks shorter than the vocabulary, a mask that allows nothing), and
// ModelSequence::forward_and_sample on a CUDA model (greedy; temperature, top-k, top-p, min-p)
// against forward() + Sampler::sample on the same model, and decode_batch_and_sample against
// decode_batch + Sampler::sample (also with rows that sort every allowed token on the device,
// and that sort against the host's order); decode ahead against none. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/model.h"
#include "engine/model_init.h"
#include "engine/sampler.h"
#include "tests/engine/cuda_test_util.h"

#ifdef AGENTRT_HAVE_CUDA
#include "engine/cuda/cuda_model.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/sort_keys.h"
#endif

namespace agentrt::engine {
namespace {

class CudaSampling : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = testing::cuda_skip_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

#ifdef AGENTRT_HAVE_CUDA

// The sort keys on the host (no GPU needed): sorting rows by (row << 32 | descending_bits) with a
// stable sort gives each row best first, ties by id, -inf after every finite value, and
// from_descending_bits returns every value (-0 comes back as 0, as sort_allowed maps it first).
TEST(CudaSortKeys, OrderRowsBestFirstAndRoundTrip) {
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const int64_t rows = 3, V = 5000;
  std::vector<std::pair<uint64_t, int32_t>> keys;
  std::vector<std::vector<float>> values(rows);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t t = 0; t < V; ++t) values[i].push_back(std::round(dist(rng) * 8.0f) / 8.0f);
    for (float special : {0.0f, -0.0f, 1e-45f, -1e-45f, 3e38f, -3e38f, 1.0f, -1.0f})
      values[i][rng() % V] = special;
    values[i][rng() % V] = -std::numeric_limits<float>::infinity();  // a token not allowed
    for (int64_t t = 0; t < V; ++t) {
      const float v = values[i][t] == 0.0f ? 0.0f : values[i][t];
      keys.push_back({(uint64_t(rows - 1 - i) << 32) | cuda::descending_bits(v), int32_t(t)});
    }
  }
  std::stable_sort(keys.begin(), keys.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (int64_t i = 0; i < rows; ++i) {
    std::vector<std::pair<float, int32_t>> want;
    for (int64_t t = 0; t < V; ++t) want.push_back({values[i][t], int32_t(t)});
    std::sort(want.begin(), want.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    const int64_t at = (rows - 1 - i) * V;  // the row's place in the sort
    for (int64_t j = 0; j < V; ++j) {
      ASSERT_EQ(keys[at + j].first >> 32, uint64_t(rows - 1 - i)) << "row " << i;
      ASSERT_EQ(keys[at + j].second, want[j].second) << "row " << i << " position " << j;
      const float back = cuda::from_descending_bits(uint32_t(keys[at + j].first));
      ASSERT_EQ(back, want[j].first) << "row " << i << " position " << j;
      if (want[j].first == 0.0f) {
        EXPECT_FALSE(std::signbit(back));
      }
    }
  }
}

TEST_F(CudaSampling, MaskedPickMatchesTheHostSampler) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  const int64_t V = 129280 + 37;
  cuda::DeviceBuffer logits_d(V * 4), mask_d((V + 31) / 32 * 4),
      scratch(cuda::masked_pick_scratch_bytes()), out_d(sizeof(cuda::MaskedPick));
  AGENTRT_CUDA_CHECK(cudaMemset(scratch.get(), 0, size_t(scratch.bytes())));
  for (int round = 0; round < 12; ++round) {
    std::vector<float> logits(V);
    for (auto& v : logits) v = std::round(dist(rng) * 4.0f) / 4.0f;  // many exact ties
    logits[rng() % V] = std::numeric_limits<float>::infinity();
    logits[rng() % V] = -std::numeric_limits<float>::infinity();
    logits[rng() % V] = std::numeric_limits<float>::quiet_NaN();
    // Rounds: no mask, dense masks, sparse masks, a mask shorter than the vocabulary, empty.
    std::vector<uint32_t> mask((V + 31) / 32, 0);
    const bool use_mask = round % 4 != 0;
    int64_t words = int64_t(mask.size());
    if (round % 4 == 1) words /= 2;
    for (int64_t i = 0; i < words * 32 && i < V; ++i)
      if ((round % 4 == 3) ? rng() % 1000 == 0 : rng() % 3 != 0) mask[i >> 5] |= 1u << (i & 31);
    if (round == 11) std::fill(mask.begin(), mask.end(), 0u);
    cuda::copy_to_device(logits_d.get(), logits.data(), V * 4);
    cuda::copy_to_device(mask_d.get(), mask.data(), int64_t(mask.size()) * 4);
    // The 64 blocks meeting through the L2, and one cluster (CudaOptions::pick_cluster).
    cuda::MaskedPick got[2]{};
    for (int cluster = 0; cluster < 2; ++cluster) {
      cuda::masked_pick(logits_d.as<float>(), V, use_mask ? mask_d.as<uint32_t>() : nullptr, words,
                        1.0f, scratch.get(), out_d.as<cuda::MaskedPick>(), nullptr, cluster == 1);
      cuda::copy_to_host(&got[cluster], out_d.get(), sizeof(got[cluster]));
    }
    Sampler host(SamplingParams{.temperature = 0.0f});
    const TokenMask tm = use_mask ? TokenMask{mask.data(), size_t(words)} : TokenMask{};
    for (const cuda::MaskedPick& g : got) {
      const bool cluster = &g == &got[1];
      if (round == 11) {
        EXPECT_EQ(g.allowed, 0) << "cluster " << cluster;
        continue;
      }
      const Sampler::Sample want = host.sample(logits, tm);
      EXPECT_EQ(g.token, want.token) << "round " << round << " cluster " << cluster;
      EXPECT_NEAR(-std::log(g.z), want.logprob, 1e-4)
          << "round " << round << " cluster " << cluster;
    }
    if (round == 11) {
      EXPECT_THROW(host.sample(logits, tm), std::invalid_argument);
    }
    EXPECT_EQ(got[1].allowed, got[0].allowed) << "round " << round;
    EXPECT_EQ(got[1].best, got[0].best) << "round " << round;
  }
}

// pick_cluster: the picks as one cluster of blocks (CudaOptions::pick_cluster).
void check_forward_and_sample(bool pick_cluster) {
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_cuda_sampling";
  testing::write_small_fp8_model(dir, 9);
  cuda::CudaOptions options;
  options.precision = cuda::GemmPrecision::f32;
  options.pick_cluster = pick_cluster;
  const auto gpu = load_cuda_model(dir, {Device::cuda}, options);
  auto a = gpu->new_sequence(), b = gpu->new_sequence();
  std::mt19937 rng(2);
  std::vector<int32_t> prompt(40);
  for (auto& t : prompt) t = int32_t(rng() % 3000);
  std::vector<uint32_t> mask((3000 + 31) / 32, 0);
  for (int64_t i = 0; i < 3000; ++i)
    if (rng() % 4 == 0) mask[i >> 5] |= 1u << (i & 31);
  Sampler sa(SamplingParams{.temperature = 0.0f}), sb(SamplingParams{.temperature = 0.0f});
  std::vector<int32_t> feed_a = prompt, feed_b = prompt;
  for (int step = 0; step < 8; ++step) {
    const TokenMask tm = step % 2 ? TokenMask{mask.data(), mask.size()} : TokenMask{};
    const Sampler::Sample got = a->forward_and_sample(feed_a, sa, tm);
    const Sampler::Sample want = sb.sample(b->forward(feed_b), tm);
    ASSERT_EQ(got.token, want.token) << "step " << step;
    EXPECT_NEAR(got.logprob, want.logprob, 1e-4) << "step " << step;
    feed_a = feed_b = {got.token};
  }
  EXPECT_EQ(a->length(), b->length());
  // Sampling: the GPU collects the tokens near the best, the host draws from them; the same
  // seeds give the same tokens as the whole row on the host.
  const SamplingParams cases[] = {{.temperature = 0.8f, .seed = 4},
                                  {.temperature = 1.0f, .top_k = 20, .seed = 5},
                                  {.temperature = 1.2f, .top_p = 0.9f, .min_p = 0.01f, .seed = 6}};
  for (const SamplingParams& p : cases) {
    Sampler ta(p), tb(p);
    for (int step = 0; step < 6; ++step) {
      const TokenMask tm = step % 2 ? TokenMask{mask.data(), mask.size()} : TokenMask{};
      const Sampler::Sample got = a->forward_and_sample(feed_a, ta, tm);
      const Sampler::Sample want = tb.sample(b->forward(feed_b), tm);
      ASSERT_EQ(got.token, want.token) << "temperature " << p.temperature << " step " << step;
      EXPECT_NEAR(got.logprob, want.logprob, 1e-4);
      feed_a = feed_b = {got.token};
    }
  }
  // A mask that allows nothing: the tokens are still fed, the call throws.
  std::vector<uint32_t> none(mask.size(), 0u);
  const int64_t before = a->length();
  EXPECT_THROW(a->forward_and_sample(feed_a, sa, {none.data(), none.size()}),
               std::invalid_argument);
  EXPECT_EQ(a->length(), before + 1);
  std::filesystem::remove_all(dir);
}

TEST_F(CudaSampling, ForwardAndSampleMatchesForwardThenSample) { check_forward_and_sample(false); }

TEST_F(CudaSampling, ClusterPickMatchesForwardThenSample) { check_forward_and_sample(true); }

// A small random FP8 + FP4 checkpoint (vocabulary 3,000) written to dir, loaded twice: with
// How the step queued ahead gets its metadata and its pick: as by default, staged on the device
// (CudaOptions::staged_step_metadata), or with the pick inside its graph (pick_in_step_graph),
// also with the step as two graphs (split_step_graph: the pick in the first) or with the pick
// writing the step's token itself (pick_feeds_step), or with the pick taken from the step's
// metadata but launched right before its graph (pick_before_step; also with pick_feeds_step).
enum class Staging {
  none,
  metadata,
  pick,
  pick_split,
  pick_feed,
  pick_before,
  pick_before_feed,
  pick_mask_early,       // pick_in_step_graph with pick_mask_early
  pick_feed_mask_early,  // and pick_feeds_step
  pick_cluster,          // pick_in_step_graph with pick_feeds_step and pick_cluster
  pick_before_cluster,   // pick_in_step_graph, pick_before_step, pick_feeds_step,
                         // pick_mask_early and pick_cluster
  pick_uploads,          // pick_in_step_graph, pick_before_step and pick_uploads_step (a
                         // masked step's mask staged with its metadata: the copy of its own)
  pick_uploads_feed,     // and pick_feeds_step and pick_mask_early (today's defaults)
};

// Whether the step queued ahead takes its deferred pick (CudaOptions::pick_in_step_graph), and
// whether it launches it before its graph (pick_before_step) rather than inside.
bool takes_pick(Staging s) { return s != Staging::none && s != Staging::metadata; }
bool picks_before(Staging s) {
  return s == Staging::pick_before || s == Staging::pick_before_feed ||
         s == Staging::pick_before_cluster || s == Staging::pick_uploads ||
         s == Staging::pick_uploads_feed;
}

// The picks `model` took by the route `staging` gives (CudaOptions::pick_in_step_graph), and that
// it took none by the other route.
int64_t taken_picks(const Model& model, Staging staging) {
  const cuda::TakenPicks taken = cuda_taken_picks(model);
  EXPECT_EQ(picks_before(staging) ? taken.in_graph : taken.before_step, 0);
  return picks_before(staging) ? taken.before_step : taken.in_graph;
}

// CudaOptions::decode_ahead and pick_copy_stream (and `staging`), and without any (both with the
// given near_capacity).
std::pair<std::shared_ptr<const Model>, std::shared_ptr<const Model>> ahead_pair(
    const std::filesystem::path& dir, uint64_t seed, int32_t near_capacity = 4096,
    Staging staging = Staging::none) {
  testing::write_small_fp8_model(dir, seed);
  cuda::CudaOptions with, without;
  with.decode_ahead = true;
  with.staged_step_metadata = staging == Staging::metadata;
  with.pick_in_step_graph = takes_pick(staging);
  with.split_step_graph = staging == Staging::pick_split;
  with.pick_cluster = staging == Staging::pick_cluster || staging == Staging::pick_before_cluster;
  with.pick_feeds_step = staging == Staging::pick_feed || staging == Staging::pick_before_feed ||
                         staging == Staging::pick_feed_mask_early || with.pick_cluster ||
                         staging == Staging::pick_uploads_feed;
  with.pick_before_step = picks_before(staging);
  with.pick_mask_early =
      staging == Staging::pick_mask_early || staging == Staging::pick_feed_mask_early ||
      staging == Staging::pick_before_cluster || staging == Staging::pick_uploads_feed;
  with.pick_uploads_step =
      staging == Staging::pick_uploads || staging == Staging::pick_uploads_feed;
  without.decode_ahead = false;
  without.pick_copy_stream = false;
  with.near_capacity = without.near_capacity = near_capacity;
  return {load_cuda_model(dir, {Device::cuda}, with),
          load_cuda_model(dir, {Device::cuda}, without)};
}

// n pairs of sequences, a[i] of model ma and b[i] of mb, both fed the same random prompt of
// first + step * i tokens (ids below 3,000).
void prompted_pairs(const Model& ma, const Model& mb, int n, int first, int step, std::mt19937& rng,
                    std::vector<std::unique_ptr<ModelSequence>>& a,
                    std::vector<std::unique_ptr<ModelSequence>>& b) {
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> prompt(size_t(first + step * i));
    for (auto& t : prompt) t = int32_t(rng() % 3000);
    a.push_back(ma.new_sequence());
    b.push_back(mb.new_sequence());
    a.back()->forward(prompt);
    b.back()->forward(prompt);
  }
}

// CudaOptions::decode_ahead: each greedy choice queues the next step fed with the picked token on
// the device. A model with it gives the same tokens, log-probabilities and logits as one without,
// through every way the queued step is used or discarded: fed (the picked token), another token
// fed, a truncate, another sequence's run in between, a mask that allows nothing, a sampling
// step, a prefill, and a forward() of logits.
void check_decode_ahead(Staging staging) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("agentrt_cuda_decode_ahead_" + std::to_string(int(staging)));
  const auto [on, off] = ahead_pair(dir, 13, 4096, staging);
  auto a = on->new_sequence(), b = off->new_sequence(), other = on->new_sequence();
  std::mt19937 rng(5);
  std::vector<int32_t> prompt(37);
  for (auto& t : prompt) t = int32_t(rng() % 3000);
  std::vector<uint32_t> mask((3000 + 31) / 32, 0), none(mask.size(), 0u);
  for (int64_t i = 0; i < 3000; ++i)
    if (rng() % 3 == 0) mask[i >> 5] |= 1u << (i & 31);
  const TokenMask masked{mask.data(), mask.size()};
  Sampler ga(SamplingParams{.temperature = 0.0f}), gb(SamplingParams{.temperature = 0.0f});
  // One step on both models; the tokens and log-probabilities must agree.
  auto step = [&](std::vector<int32_t> feed, TokenMask tm, const std::string& what) {
    const Sampler::Sample x = a->forward_and_sample(feed, ga, tm);
    const Sampler::Sample y = b->forward_and_sample(feed, gb, tm);
    EXPECT_EQ(x.token, y.token) << what;
    EXPECT_NEAR(x.logprob, y.logprob, 1e-6) << what;
    EXPECT_EQ(a->length(), b->length()) << what;
    return x.token;
  };
  int32_t t = step(prompt, {}, "prompt");
  for (int i = 0; i < 12; ++i)  // fed as picked: every step found queued
    t = step({t}, i % 2 ? masked : TokenMask{}, "fed " + std::to_string(i));
  t = step({int32_t((t + 1) % 3000)}, masked, "another token");
  t = step({t}, {}, "after another token");
  a->truncate(a->length() - 3);
  b->truncate(b->length() - 3);
  t = step({t}, masked, "after truncate");
  t = step({t}, {}, "after truncate, fed");
  std::vector<int32_t> side = {int32_t(rng() % 3000), int32_t(rng() % 3000)};
  Sampler gs(SamplingParams{.temperature = 0.0f});
  other->forward_and_sample(side, gs, {});  // overwrites the queued step's logits
  t = step({t}, {}, "after another sequence");
  t = step({t}, masked, "after another sequence, fed");
  EXPECT_THROW(a->forward_and_sample({&t, 1}, ga, {none.data(), none.size()}),
               std::invalid_argument);
  EXPECT_THROW(b->forward_and_sample({&t, 1}, gb, {none.data(), none.size()}),
               std::invalid_argument);
  EXPECT_EQ(a->length(), b->length());
  t = step({int32_t(rng() % 3000)}, {}, "after no token");
  Sampler wa(SamplingParams{.temperature = 0.8f, .seed = 3}),
      wb(SamplingParams{.temperature = 0.8f, .seed = 3});
  const Sampler::Sample x = a->forward_and_sample({&t, 1}, wa, masked);
  const Sampler::Sample y = b->forward_and_sample({&t, 1}, wb, masked);
  EXPECT_EQ(x.token, y.token) << "sampling";
  t = step({x.token}, {}, "after sampling");
  t = step({t, int32_t(rng() % 3000), int32_t(rng() % 3000)}, masked, "three tokens");
  t = step({t}, {}, "after three tokens");
  const std::vector<float> la = a->forward({&t, 1}), lb = b->forward({&t, 1});
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) ASSERT_EQ(la[i], lb[i]) << "logit " << i;
  EXPECT_EQ(a->length(), b->length());
  // Every step fed as picked took its pick (into its graph, or right before it), and only with
  // the option.
  if (takes_pick(staging)) {
    EXPECT_GE(taken_picks(*on, staging), 12);
  } else {
    EXPECT_EQ(taken_picks(*on, staging), 0);
  }
  std::filesystem::remove_all(dir);
}

// decode_batch_and_sample with expect_same_batch: a batch of greedy rows queues the next step,
// each row fed its pick on the device. The same tokens and log-probabilities as a model without
// decode ahead, through every way the queued step is used or discarded: the same batch in
// another order (used), a row fed another token, a batch without one of the sequences, a
// sampling row in another order (used; its sort reads the queued step's row), a mask that
// allows nothing for one row, another sequence's run in between, and a truncate.
void check_batch_ahead(Staging staging) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("agentrt_cuda_batch_ahead_" + std::to_string(int(staging)));
  // near_capacity 8: a sampling row sorts its allowed tokens on the device, reading its logits
  // row of the queued step.
  const auto [on, off] = ahead_pair(dir, 17, 8, staging);
  std::mt19937 rng(8);
  const int n = 4;
  std::vector<std::unique_ptr<ModelSequence>> a, b;
  prompted_pairs(*on, *off, n, 15, 4, rng, a, b);
  std::vector<uint32_t> mask((3000 + 31) / 32, 0), none(mask.size(), 0u);
  for (int64_t i = 0; i < 3000; ++i)
    if (rng() % 3 == 0) mask[i >> 5] |= 1u << (i & 31);
  std::vector<Sampler> ga, gb;
  for (int i = 0; i < n; ++i) {
    ga.emplace_back(SamplingParams{.temperature = 0.0f});
    gb.emplace_back(SamplingParams{.temperature = 0.0f});
  }
  std::vector<int32_t> next(n);
  for (auto& t : next) t = int32_t(rng() % 3000);
  // One step over the sequences `which` (in that order) on both models; the choices must agree.
  // `sampler` replaces row 0's samplers when given; `masks` per row of `which`.
  auto step = [&](const std::vector<int>& which, std::vector<TokenMask> masks,
                  const std::string& what, Sampler* sa0 = nullptr, Sampler* sb0 = nullptr) {
    std::vector<ModelSequence*> sa, sb;
    std::vector<Sampler*> pa, pb;
    std::vector<int32_t> tokens;
    for (int i : which) {
      sa.push_back(a[i].get());
      sb.push_back(b[i].get());
      pa.push_back(&ga[i]);
      pb.push_back(&gb[i]);
      tokens.push_back(next[i]);
    }
    if (sa0) pa[0] = sa0, pb[0] = sb0;
    const auto x = on->decode_batch_and_sample(sa, tokens, pa, masks, {.expect_same_batch = true});
    const auto y = off->decode_batch_and_sample(sb, tokens, pb, masks, {.expect_same_batch = true});
    for (size_t r = 0; r < which.size(); ++r) {
      const int i = which[r];
      ASSERT_EQ(bool(x[r].error), bool(y[r].error)) << what << " row " << r;
      EXPECT_EQ(a[i]->length(), b[i]->length()) << what << " row " << r;
      if (x[r].error) {
        next[i] = int32_t(rng() % 3000);  // no choice: the caller feeds something else
        continue;
      }
      EXPECT_EQ(x[r].sample.token, y[r].sample.token) << what << " row " << r;
      EXPECT_NEAR(x[r].sample.logprob, y[r].sample.logprob, 1e-6) << what << " row " << r;
      next[i] = x[r].sample.token;
    }
  };
  const TokenMask m{mask.data(), mask.size()};
  const std::vector<int> all = {0, 1, 2, 3};
  for (int s = 0; s < 6; ++s)  // steady: every step found queued
    step(all, {m, {}, m, {}}, "steady " + std::to_string(s));
  step({2, 0, 3, 1}, {{}, m, {}, m}, "another order");
  next[1] = (next[1] + 7) % 3000;
  step(all, {m, m, m, m}, "row 1 fed another token");
  step(all, {}, "after another token");
  step({0, 1, 3}, {}, "without sequence 2");
  step({2}, {m}, "sequence 2 alone");  // one greedy row: its pick may go into the next graph
  step({2}, {}, "sequence 2 alone, fed");
  step(all, {}, "all again");
  Sampler wa(SamplingParams{.temperature = 0.9f, .seed = 2}),
      wb(SamplingParams{.temperature = 0.9f, .seed = 2});
  step(all, {}, "before a sampling row");
  step({3, 2, 1, 0}, {m, {}, {}, {}}, "a sampling row, another order", &wa, &wb);
  step(all, {}, "after a sampling row");
  step(all, {{}, {none.data(), none.size()}, {}, {}}, "row 1 allows nothing");
  step(all, {}, "after no token");
  auto other = on->new_sequence();
  other->forward(std::vector<int32_t>{5, 6, 7});
  step(all, {}, "after another sequence's run");
  step(all, {}, "steady again");
  a[3]->truncate(a[3]->length() - 2);
  b[3]->truncate(b[3]->length() - 2);
  step(all, {}, "after a truncate");
  step(all, {}, "last");
  if (takes_pick(staging)) {
    EXPECT_GE(taken_picks(*on, staging), 1);  // sequence 2 alone, fed
  } else {
    EXPECT_EQ(taken_picks(*on, staging), 0);
  }
  std::filesystem::remove_all(dir);
}

TEST_F(CudaSampling, DecodeAheadGivesTheSameResultsAsWithout) { check_decode_ahead(Staging::none); }

TEST_F(CudaSampling, DecodeBatchAheadGivesTheSameResultsAsWithout) {
  check_batch_ahead(Staging::none);
}

// The same with the replayed steps' metadata staged on the device (the feed kernel that copies
// it into place also feeds the picks), and with one row's greedy pick inside its step's graph.
TEST_F(CudaSampling, StagedStepMetadataDecodesAheadAsWithout) {
  check_decode_ahead(Staging::metadata);
  check_batch_ahead(Staging::metadata);
}

TEST_F(CudaSampling, PickInStepGraphDecodesAheadAsWithout) {
  check_decode_ahead(Staging::pick);
  check_batch_ahead(Staging::pick);
  check_decode_ahead(Staging::pick_split);
}

// With the pick writing the step's token itself (CudaOptions::pick_feeds_step): no feed kernel.
TEST_F(CudaSampling, PickFeedingItsStepDecodesAheadAsWithout) {
  check_decode_ahead(Staging::pick_feed);
  check_batch_ahead(Staging::pick_feed);
}

// With the pick launched right before the step's graph (CudaOptions::pick_before_step), with and
// without writing the step's token itself.
TEST_F(CudaSampling, PickBeforeItsStepDecodesAheadAsWithout) {
  check_decode_ahead(Staging::pick_before);
  check_batch_ahead(Staging::pick_before);
  check_decode_ahead(Staging::pick_before_feed);
  check_batch_ahead(Staging::pick_before_feed);
}

// With the pick's mask up on the copy stream when the pick is queued (CudaOptions::
// pick_mask_early), with and without the pick writing the step's token.
TEST_F(CudaSampling, PickWithItsMaskUpEarlyDecodesAheadAsWithout) {
  check_decode_ahead(Staging::pick_mask_early);
  check_batch_ahead(Staging::pick_mask_early);
  check_decode_ahead(Staging::pick_feed_mask_early);
  check_batch_ahead(Staging::pick_feed_mask_early);
}

// With the picks as one cluster of blocks (CudaOptions::pick_cluster): inside the step's graph,
// and launched right before it with its mask up early, both writing the step's token.
TEST_F(CudaSampling, ClusterPickDecodesAheadAsWithout) {
  check_decode_ahead(Staging::pick_cluster);
  check_batch_ahead(Staging::pick_cluster);
  check_decode_ahead(Staging::pick_before_cluster);
  check_batch_ahead(Staging::pick_before_cluster);
}

// With the pick before the step copying the step's metadata up itself (CudaOptions::
// pick_uploads_step): with a masked step's mask staged with the metadata (such steps take the
// copy of their own) and with today's defaults (the mask up early, the pick feeding the step).
TEST_F(CudaSampling, PickUploadingItsStepDecodesAheadAsWithout) {
  check_decode_ahead(Staging::pick_uploads);
  check_batch_ahead(Staging::pick_uploads);
  check_decode_ahead(Staging::pick_uploads_feed);
  check_batch_ahead(Staging::pick_uploads_feed);
}

// decode_batch_and_sample against decode_batch + Sampler::sample; near_capacity small: every
// sampling row draws among all its allowed tokens sorted on the device (on several host threads
// when parallel_draw_tokens is small).
void check_batch_sampling(int32_t near_capacity, int64_t parallel_draw_tokens = int64_t(1) << 18) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("agentrt_cuda_batch_sampling_" + std::to_string(near_capacity) + "_" +
                    std::to_string(parallel_draw_tokens));
  testing::write_small_fp8_model(dir, 11);
  cuda::CudaOptions options;
  options.precision = cuda::GemmPrecision::f32;
  options.near_capacity = near_capacity;
  options.parallel_draw_tokens = parallel_draw_tokens;
  const auto gpu = load_cuda_model(dir, {Device::cuda}, options);
  std::mt19937 rng(3);
  const int n = 5;
  std::vector<std::unique_ptr<ModelSequence>> a, b;
  prompted_pairs(*gpu, *gpu, n, 20, 3, rng, a, b);
  std::vector<uint32_t> sparse((3000 + 31) / 32, 0), none(sparse.size(), 0u);
  for (int64_t i = 0; i < 3000; ++i)
    if (rng() % 5 == 0) sparse[i >> 5] |= 1u << (i & 31);
  std::vector<ModelSequence*> sa, sb;
  for (int i = 0; i < n; ++i) sa.push_back(a[i].get()), sb.push_back(b[i].get());
  // Round 0: all greedy (one batched pick; row 3's mask allows nothing). Round 1: one row
  // samples at a temperature among greedy ones. Round 2: every row but one samples, with top-k,
  // top-p and min-p, masked and not, and row 3's mask allows nothing again.
  const std::vector<SamplingParams> sampling = {{.temperature = 0.7f, .seed = 1},
                                                {.temperature = 1.3f, .top_k = 40, .seed = 2},
                                                {.temperature = 0.9f, .top_p = 0.9f, .seed = 3},
                                                {.temperature = 0.8f, .seed = 4},
                                                {.temperature = 0.5f, .min_p = 0.05f, .seed = 5}};
  for (int round = 0; round < 3; ++round) {
    std::vector<Sampler> samplers, host;
    for (int i = 0; i < n; ++i) {
      SamplingParams p = SamplingParams{.temperature = 0.0f};
      if (round == 1 && i == 2) p = SamplingParams{.temperature = 0.9f, .seed = 7};
      if (round == 2) p = sampling[i];
      samplers.emplace_back(p);
      host.emplace_back(p);
    }
    std::vector<Sampler*> ptrs;
    for (auto& x : samplers) ptrs.push_back(&x);
    std::vector<TokenMask> masks(n);
    masks[1] = {sparse.data(), sparse.size()};
    masks[2] = {sparse.data(), sparse.size()};
    if (round != 1) masks[3] = {none.data(), none.size()};
    std::vector<int32_t> tokens(n);
    for (auto& t : tokens) t = int32_t(rng() % 3000);
    const auto got = gpu->decode_batch_and_sample(sa, tokens, ptrs, masks);
    const auto rows = gpu->decode_batch(sb, tokens);
    ASSERT_EQ(got.size(), size_t(n));
    for (int i = 0; i < n; ++i) {
      if (round != 1 && i == 3) {
        EXPECT_TRUE(got[i].error) << "row " << i;
        continue;
      }
      ASSERT_FALSE(got[i].error) << "round " << round << " row " << i;
      const Sampler::Sample want = host[i].sample(rows[i], masks[i]);
      EXPECT_EQ(got[i].sample.token, want.token) << "round " << round << " row " << i;
      EXPECT_NEAR(got[i].sample.logprob, want.logprob, 1e-4) << "round " << round << " row " << i;
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(a[i]->length(), b[i]->length());
  }
  std::filesystem::remove_all(dir);
}

TEST_F(CudaSampling, DecodeBatchAndSampleMatchesDecodeBatchThenSample) {
  check_batch_sampling(4096);
}

TEST_F(CudaSampling, RowsWithTooManyNearTokensSortOnTheDevice) { check_batch_sampling(8); }

TEST_F(CudaSampling, SortedRowsDrawOnSeveralThreadsAsInOrder) { check_batch_sampling(8, 1); }

// sort_allowed against the host's order (logit descending, then id) on vocabulary-sized rows
// with many ties, both zeros, non-finite values and masks of every kind (none, whole, a third
// of the words, sparse, no words: nothing allowed), all sorted in one call, the logits rows in
// another order than the sort's.
TEST_F(CudaSampling, SortAllowedOrdersAsTheHostSampler) {
  std::mt19937 rng(8);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const int64_t V = 129280, rows = 5, stride = (V + 31) / 32;
  std::vector<float> logits(rows * V);
  std::vector<uint32_t> masks(rows * stride, 0);
  std::vector<int32_t> row_of(rows), words(rows);
  std::vector<std::vector<std::pair<float, int32_t>>> want(rows);
  for (int64_t i = 0; i < rows; ++i) {
    row_of[i] = int32_t(rows - 1 - i);
    float* l = logits.data() + row_of[i] * V;
    for (int64_t t = 0; t < V; ++t) l[t] = std::round(dist(rng) * 8.0f) / 8.0f;  // ties, zeros
    for (int k = 0; k < 50; ++k) l[rng() % V] = -0.0f;
    l[rng() % V] = std::numeric_limits<float>::infinity();
    l[rng() % V] = std::numeric_limits<float>::quiet_NaN();
    uint32_t* mask = masks.data() + i * stride;
    words[i] = i == 0 ? -1 : i == 4 ? 0 : int32_t(stride / (i == 2 ? 3 : 1));
    for (int64_t t = 0; t < int64_t(std::max(words[i], 0)) * 32; ++t)
      if (rng() % (i == 3 ? 500 : 2) == 0) mask[t >> 5] |= 1u << (t & 31);
    const TokenMask tm = words[i] < 0 ? TokenMask{} : TokenMask{mask, size_t(words[i])};
    for (int64_t t = 0; t < V; ++t)
      if (std::isfinite(l[t]) && (words[i] < 0 || tm.allows(t)))
        want[i].push_back({l[t], int32_t(t)});
    std::sort(want[i].begin(), want[i].end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
  }
  auto logits_d = testing::upload(logits), masks_d = testing::upload(masks),
       row_of_d = testing::upload(row_of), words_d = testing::upload(words);
  cuda::DeviceBuffer scratch(cuda::sort_allowed_scratch_bytes(V, rows));
  const cuda::SortRows sort{row_of_d.as<int32_t>(), masks_d.as<uint32_t>(), stride,
                            words_d.as<int32_t>(), rows};
  const float* keys = nullptr;
  const int32_t* ids = nullptr;
  cuda::sort_allowed(logits_d.as<float>(), V, sort, scratch.get(), &keys, &ids, nullptr);
  std::vector<float> got_keys(rows * V);
  std::vector<int32_t> got_ids(rows * V);
  cuda::copy_to_host(got_keys.data(), keys, rows * V * 4);
  cuda::copy_to_host(got_ids.data(), ids, rows * V * 4);
  EXPECT_TRUE(want[4].empty());
  for (int64_t i = 0; i < rows; ++i)
    for (size_t j = 0; j < want[i].size(); ++j) {
      ASSERT_EQ(got_ids[i * V + j], want[i][j].second) << "row " << i << " position " << j;
      ASSERT_EQ(got_keys[i * V + j], want[i][j].first) << "row " << i << " position " << j;
    }
}

#endif  // AGENTRT_HAVE_CUDA

}  // namespace
}  // namespace agentrt::engine
