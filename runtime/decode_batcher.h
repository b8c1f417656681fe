// Continuous batching for the native engine: every generation of a serving process hands its
// model work (prompt prefill, one-token decode steps, jump-forward prefills) to one scheduler
// thread, which runs the pending one-token steps of all sequences in one Model::decode_batch call
// (one forward pass) and interleaves prefill chunks between those batches. A step may carry its
// sampler and grammar mask (forward_and_sample): the pass then chooses the tokens, on the GPU
// for a CUDA model, and no logits row leaves the device.
//
// Fairness: decode steps are served first-come first-served up to max_batch per pass, so a step
// waits at most ceil(waiting / max_batch) passes; prefills advance round-robin by one chunk per
// pass, so a long prompt delays decode steps by at most one chunk and never blocks them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "engine/model.h"

namespace agentrt {

struct DecodeBatcherOptions {
  size_t max_batch = 64;       // one-token steps per forward pass
  int64_t prefill_chunk = 64;  // prompt tokens per scheduler pass
  // How long the scheduler waits for the other active generations to submit their step before
  // running a partial batch (they are sampling the previous step's logits meanwhile).
  std::chrono::microseconds gather_window{2000};
};

struct DecodeBatcherStats {
  int64_t passes = 0;          // decode_batch calls
  int64_t decode_steps = 0;    // one-token steps served
  int64_t batched_passes = 0;  // passes that carried more than one sequence
  int64_t max_batch_seen = 0;
  int64_t prefill_chunks = 0;
};

class DecodeBatcher {
 public:
  DecodeBatcher(std::shared_ptr<const engine::Model> model, DecodeBatcherOptions options = {});
  ~DecodeBatcher();  // fails waiting requests with std::runtime_error, joins the scheduler
  DecodeBatcher(const DecodeBatcher&) = delete;
  DecodeBatcher& operator=(const DecodeBatcher&) = delete;

  // Counts a generation as active while it lives, so the scheduler knows how many steps to
  // expect in a pass. Hold one for the whole generation.
  class Activity {
   public:
    explicit Activity(DecodeBatcher& batcher);
    ~Activity();
    Activity(const Activity&) = delete;
    Activity& operator=(const Activity&) = delete;

   private:
    DecodeBatcher& batcher_;
  };

  // Feeds `tokens` to `sequence` and returns the logits of the last one; blocks until the
  // scheduler ran it. One token goes into a batched decode pass, more are prefilled in chunks.
  // The caller must not touch `sequence` meanwhile. Rethrows the engine's exception.
  std::vector<float> forward(engine::ModelSequence& sequence, std::span<const int32_t> tokens);

  // forward() with the next token chosen by `sampler` under `mask`. One token joins the batched
  // pass and is chosen there (Model::decode_batch_and_sample: a CUDA model picks greedy rows on
  // the GPU and returns only the tokens); more tokens are prefilled as forward() does and the
  // last row sampled here. Throws std::invalid_argument, with the tokens fed, when the mask
  // allows no token; `sampler` and `mask` must outlive the call.
  engine::Sampler::Sample forward_and_sample(engine::ModelSequence& sequence,
                                             std::span<const int32_t> tokens,
                                             engine::Sampler& sampler, engine::TokenMask mask);

  DecodeBatcherStats stats() const;

 private:
  struct Request;
  void schedule();
  // steady: every active generation is in this batch and no prompt waits, so the next pass is
  // likely the same sequences (the model may start it early: BatchChoiceOptions).
  void run_decode_pass(std::vector<std::shared_ptr<Request>>& batch, bool steady);
  void run_prefill_chunk(const std::shared_ptr<Request>& request);

  std::shared_ptr<const engine::Model> model_;
  DecodeBatcherOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Request>> decodes_;
  std::deque<std::shared_ptr<Request>> prefills_;
  int64_t active_ = 0;
  bool stop_ = false;
  DecodeBatcherStats stats_;
  std::thread scheduler_;
};

}  // namespace agentrt
