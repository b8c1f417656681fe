// The public face of the DeepSeek-V4 engine: an immutable Model (weights, shared by every sequence
// and thread) and a per-sequence ModelSequence holding the caches (sliding-window KV, compressor
// and indexer state). The runtime and the CUDA backend code against this header only.
#pragma once

#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <span>
#include <unordered_set>
#include <vector>

#include "engine/forward_config.h"
#include "engine/sampler.h"

namespace agentrt::engine {

enum class Device { cpu, cuda };

struct LoadOptions {
  Device device = Device::cpu;
  int threads = 0;  // 0 = all cores
};

// Per-sequence state. Not thread-safe: one per sequence, used by one thread at a time.
class ModelSequence {
 public:
  virtual ~ModelSequence() = default;
  // Appends tokens (prefill or decode) and returns logits: every position ([n][vocab] row-major)
  // if all_positions, else only the last row. Throws on an out-of-range token id.
  virtual std::vector<float> forward(std::span<const int32_t> tokens,
                                     bool all_positions = false) = 0;
  // Appends tokens and samples the next token from the last position, the mask applied first
  // (Sampler::sample's contract; throws std::invalid_argument when the mask allows nothing).
  // The CUDA backend makes greedy choices on the GPU and reads back only the token; otherwise
  // this is forward() followed by sampler.sample() on the host.
  virtual Sampler::Sample forward_and_sample(std::span<const int32_t> tokens, Sampler& sampler,
                                             TokenMask mask = {}) {
    const std::vector<float> logits = forward(tokens);
    return sampler.sample(logits, mask);
  }
  virtual int64_t length() const = 0;
  // Rewinds to an earlier length (0 <= new_length <= length()); a later forward() continues
  // from there exactly as if the dropped tokens had never been fed.
  virtual void truncate(int64_t new_length) = 0;
};

// Model::decode_batch_and_sample's options.
struct BatchChoiceOptions {
  // The caller expects to feed the same sequences their chosen tokens next (a steady decode
  // batch, no other work in between): the backend may start that step before returning (the
  // CUDA backend does for a batch of greedy rows; a next call that differs discards it).
  bool expect_same_batch = false;
};

class Model {
 public:
  virtual ~Model() = default;
  // Loads config.json + *.safetensors from dir. Device::cuda throws unless the CUDA backend is
  // built and a GPU is present.
  static std::shared_ptr<const Model> load(const std::filesystem::path& dir,
                                           const LoadOptions& options = {});

  // The model's shape as the forward pass reads it (parsed from config.json).
  virtual const ModelConfig& config() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::unique_ptr<ModelSequence> new_sequence() const = 0;
  // Continuous batching hook: one decode step for several sequences (each fed one token);
  // returns one logits row per sequence. The sequences must be distinct and made by this model.
  virtual std::vector<std::vector<float>> decode_batch(std::span<ModelSequence* const> seqs,
                                                       std::span<const int32_t> tokens) const = 0;

  // decode_batch with each sequence's next token chosen by samplers[i] under masks[i] (masks
  // empty: none), where the backend can without bringing the logits rows back (the CUDA backend
  // picks greedy rows on the GPU, one read back for the whole batch). Every token is fed even
  // where a choice fails: that row's `error` holds the exception (e.g. a mask that allows
  // nothing) and the others are unaffected.
  struct BatchChoice {
    Sampler::Sample sample{};
    std::exception_ptr error;
  };
  using BatchChoiceOptions = agentrt::engine::BatchChoiceOptions;
  virtual std::vector<BatchChoice> decode_batch_and_sample(
      std::span<ModelSequence* const> seqs, std::span<const int32_t> tokens,
      std::span<Sampler* const> samplers, std::span<const TokenMask> masks,
      const BatchChoiceOptions& options = {}) const;
};

// Throws std::invalid_argument unless there is one sampler (non-null) per sequence and no masks
// or one per sequence.
void check_batch_choice_args(size_t sequences, std::span<Sampler* const> samplers,
                             std::span<const TokenMask> masks);

// For decode_batch implementations: throws std::invalid_argument saying what is wrong with the
// batch (as many sequences as tokens; sequence `index` made by this model, or seen twice).
void check_batch_size(size_t sequences, size_t tokens);
[[noreturn]] void throw_bad_batch_sequence(size_t index, bool twice);

// The batch's sequences as the backend's own sequence type Seq, checked: as many as the tokens,
// each made by `model` (Seq::model()), none twice.
template <class Seq, class M>
std::vector<Seq*> own_batch_sequences(const M& model, std::span<ModelSequence* const> seqs,
                                      size_t tokens) {
  check_batch_size(seqs.size(), tokens);
  std::vector<Seq*> out;
  std::unordered_set<const Seq*> seen;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto* s = dynamic_cast<Seq*>(seqs[i]);
    if (!s || &s->model() != &model) throw_bad_batch_sequence(i, false);
    if (!seen.insert(s).second) throw_bad_batch_sequence(i, true);
    out.push_back(s);
  }
  return out;
}

}  // namespace agentrt::engine
