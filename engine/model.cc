// The CPU implementation of Model / ModelSequence (engine/model.h) over ForwardPass.
#include "engine/model.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include "engine/forward.h"
#include "engine/parallel.h"

namespace agentrt::engine {
namespace {

class CpuModel;

class CpuSequence final : public ModelSequence {
 public:
  CpuSequence(const CpuModel& model, SequenceCache cache)
      : model_(model), cache_(std::move(cache)) {}

  std::vector<float> forward(std::span<const int32_t> tokens, bool all_positions) override;
  int64_t length() const override { return cache_.length; }
  void truncate(int64_t new_length) override {
    if (new_length < 0 || new_length > cache_.length)
      throw std::out_of_range("ModelSequence::truncate: length " + std::to_string(new_length) +
                              " outside [0, " + std::to_string(cache_.length) + "]");
    cache_.truncate(new_length);
  }

  const CpuModel& model() const { return model_; }
  SequenceCache& cache() { return cache_; }

 private:
  void forward_slices(std::span<const int32_t> tokens, bool all_positions, int64_t max_rows,
                      float* logits);

  const CpuModel& model_;
  SequenceCache cache_;
};

class CpuModel final : public Model {
 public:
  CpuModel(ForwardConfig config, ForwardWeights weights, int threads)
      : pass_(std::move(config), std::move(weights)), pool_(threads) {}

  const ForwardConfig& config() const override { return pass_.config(); }
  int32_t vocab_size() const override { return int32_t(pass_.config().vocab_size); }
  std::unique_ptr<ModelSequence> new_sequence() const override {
    return std::make_unique<CpuSequence>(*this, pass_.new_cache());
  }

  std::vector<std::vector<float>> decode_batch(std::span<ModelSequence* const> seqs,
                                               std::span<const int32_t> tokens) const override {
    std::vector<ForwardRow> rows;
    const auto own = own_batch_sequences<CpuSequence>(*this, seqs, tokens.size());
    for (size_t i = 0; i < own.size(); ++i)
      rows.push_back({&own[i]->cache(), own[i]->cache().length, tokens[i], true});
    const int64_t V = pass_.config().vocab_size;
    std::vector<float> flat(rows.size() * V);
    run(rows, flat.data());
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < rows.size(); ++i) {
      rows[i].cache->length += 1;
      out.emplace_back(flat.begin() + i * V, flat.begin() + (i + 1) * V);
    }
    return out;
  }

  // Runs rows; on failure the caches are rolled back to where they were, so a
  // throwing forward leaves every sequence usable.
  void run(std::span<const ForwardRow> rows, float* logits) const {
    try {
      pass_.run(rows, logits, pool_);
    } catch (...) {
      for (const ForwardRow& r : rows) r.cache->truncate(r.cache->length);
      throw;
    }
  }

  const ForwardPass& pass() const { return pass_; }

 private:
  ForwardPass pass_;
  WorkerPool pool_;
};

std::vector<float> CpuSequence::forward(std::span<const int32_t> tokens, bool all_positions) {
  if (tokens.empty()) return {};
  // Long prompts go through in slices: activations stay bounded and the cache makes the result
  // identical to one pass.
  constexpr int64_t kMaxRows = 512;
  const int64_t n = int64_t(tokens.size()), V = model_.vocab_size();
  std::vector<float> logits((all_positions ? n : 1) * V);
  const int64_t start = cache_.length;
  try {
    forward_slices(tokens, all_positions, kMaxRows, logits.data());
  } catch (...) {
    cache_.truncate(start);  // all or nothing
    throw;
  }
  return logits;
}

void CpuSequence::forward_slices(std::span<const int32_t> tokens, bool all_positions,
                                 int64_t max_rows, float* logits) {
  const int64_t n = int64_t(tokens.size()), V = model_.vocab_size();
  for (int64_t begin = 0; begin < n; begin += max_rows) {
    const int64_t end = std::min(n, begin + max_rows);
    std::vector<ForwardRow> rows;
    rows.reserve(end - begin);
    for (int64_t i = begin; i < end; ++i)
      rows.push_back(
          {&cache_, cache_.length + (i - begin), tokens[i], all_positions || i == n - 1});
    model_.run(rows, all_positions ? logits + begin * V : logits);
    cache_.length += end - begin;
  }
}

}  // namespace

#ifdef AGENTRT_HAVE_CUDA
// The CUDA backend's entry point, defined in engine/cuda/ (built only with nvcc). It throws a
// clear error when no GPU is present.
std::shared_ptr<const Model> load_cuda_model(const std::filesystem::path& dir,
                                             const LoadOptions& options);
#endif

std::shared_ptr<const Model> Model::load(const std::filesystem::path& dir,
                                         const LoadOptions& options) {
  if (options.device == Device::cuda) {
#ifdef AGENTRT_HAVE_CUDA
    return load_cuda_model(dir, options);
#else
    throw std::runtime_error("Model::load(" + dir.string() +
                             "): device cuda: this build has no CUDA backend (nvcc was not "
                             "found when it was configured, or -DAGENTRT_CUDA=OFF)");
#endif
  }
  ForwardConfig fconfig = ForwardConfig::from_file(dir / "config.json");
  ForwardWeights weights = ForwardWeights::load(dir, fconfig);
  return std::make_shared<CpuModel>(std::move(fconfig), std::move(weights), options.threads);
}

void check_batch_choice_args(size_t sequences, std::span<Sampler* const> samplers,
                             std::span<const TokenMask> masks) {
  if (samplers.size() != sequences)
    throw std::invalid_argument("decode_batch_and_sample: " + std::to_string(sequences) +
                                " sequences but " + std::to_string(samplers.size()) + " samplers");
  if (!masks.empty() && masks.size() != sequences)
    throw std::invalid_argument("decode_batch_and_sample: " + std::to_string(sequences) +
                                " sequences but " + std::to_string(masks.size()) + " masks");
  for (size_t i = 0; i < samplers.size(); ++i)
    if (!samplers[i])
      throw std::invalid_argument("decode_batch_and_sample: sampler " + std::to_string(i) +
                                  " is null");
}

void check_batch_size(size_t sequences, size_t tokens) {
  if (sequences != tokens)
    throw std::invalid_argument("decode_batch: " + std::to_string(sequences) + " sequences but " +
                                std::to_string(tokens) + " tokens");
}

void throw_bad_batch_sequence(size_t index, bool twice) {
  throw std::invalid_argument("decode_batch: sequence " + std::to_string(index) +
                              (twice ? " appears twice" : " was not made by this model"));
}

std::vector<Model::BatchChoice> Model::decode_batch_and_sample(
    std::span<ModelSequence* const> seqs, std::span<const int32_t> tokens,
    std::span<Sampler* const> samplers, std::span<const TokenMask> masks,
    const BatchChoiceOptions& /*options: a hint this implementation has no use for*/) const {
  check_batch_choice_args(seqs.size(), samplers, masks);
  const std::vector<std::vector<float>> rows = decode_batch(seqs, tokens);
  std::vector<BatchChoice> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    try {
      out[i].sample = samplers[i]->sample(rows[i], masks.empty() ? TokenMask{} : masks[i]);
    } catch (...) {
      out[i].error = std::current_exception();
    }
  }
  return out;
}

}  // namespace agentrt::engine
