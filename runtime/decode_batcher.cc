#include "runtime/decode_batcher.h"

#include <algorithm>
#include <future>
#include <stdexcept>

namespace agentrt {

struct DecodeBatcher::Request {
  engine::ModelSequence* sequence = nullptr;
  std::vector<int32_t> tokens;
  size_t fed = 0;  // prefill progress
  std::vector<float> last_logits;
  // Set for a one-token step whose token the pass chooses (mask: none when words is null).
  engine::Sampler* sampler = nullptr;
  engine::TokenMask mask;
  struct Result {
    std::vector<float> logits;  // without a sampler
    engine::Sampler::Sample sample{};
  };
  std::promise<Result> done;
};

DecodeBatcher::DecodeBatcher(std::shared_ptr<const engine::Model> model,
                             DecodeBatcherOptions options)
    : model_(std::move(model)), options_(options) {
  if (!model_) throw std::invalid_argument("DecodeBatcher: no model");
  if (options_.max_batch == 0) throw std::invalid_argument("DecodeBatcher: max_batch must be > 0");
  if (options_.prefill_chunk <= 0)
    throw std::invalid_argument("DecodeBatcher: prefill_chunk must be > 0");
  scheduler_ = std::thread([this] { schedule(); });
}

DecodeBatcher::~DecodeBatcher() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  scheduler_.join();
  const auto fail = [](std::deque<std::shared_ptr<Request>>& q) {
    for (auto& r : q)
      r->done.set_exception(
          std::make_exception_ptr(std::runtime_error("DecodeBatcher: stopped before this step")));
    q.clear();
  };
  fail(decodes_);
  fail(prefills_);
}

DecodeBatcher::Activity::Activity(DecodeBatcher& batcher) : batcher_(batcher) {
  std::lock_guard lock(batcher_.mutex_);
  ++batcher_.active_;
}

DecodeBatcher::Activity::~Activity() {
  {
    std::lock_guard lock(batcher_.mutex_);
    --batcher_.active_;
  }
  // One fewer step to wait for: a gathering pass may be complete now.
  batcher_.wake_.notify_all();
}

std::vector<float> DecodeBatcher::forward(engine::ModelSequence& sequence,
                                          std::span<const int32_t> tokens) {
  if (tokens.empty()) return {};
  auto request = std::make_shared<Request>();
  request->sequence = &sequence;
  request->tokens.assign(tokens.begin(), tokens.end());
  auto result = request->done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stop_) throw std::runtime_error("DecodeBatcher: stopped");
    (tokens.size() == 1 ? decodes_ : prefills_).push_back(std::move(request));
  }
  wake_.notify_all();
  return result.get().logits;
}

engine::Sampler::Sample DecodeBatcher::forward_and_sample(engine::ModelSequence& sequence,
                                                          std::span<const int32_t> tokens,
                                                          engine::Sampler& sampler,
                                                          engine::TokenMask mask) {
  if (tokens.size() != 1) return sampler.sample(forward(sequence, tokens), mask);
  auto request = std::make_shared<Request>();
  request->sequence = &sequence;
  request->tokens.assign(tokens.begin(), tokens.end());
  request->sampler = &sampler;
  request->mask = mask;
  auto result = request->done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stop_) throw std::runtime_error("DecodeBatcher: stopped");
    decodes_.push_back(std::move(request));
  }
  wake_.notify_all();
  return result.get().sample;
}

DecodeBatcherStats DecodeBatcher::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void DecodeBatcher::schedule() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || !decodes_.empty() || !prefills_.empty(); });
    if (stop_) return;
    // Gather: the other active generations are sampling their previous step; give them a moment
    // to submit, so one pass carries them all.
    const auto deadline = std::chrono::steady_clock::now() + options_.gather_window;
    wake_.wait_until(lock, deadline, [&] {
      return stop_ || decodes_.size() >= options_.max_batch ||
             static_cast<int64_t>(decodes_.size() + prefills_.size()) >= active_;
    });
    if (stop_) return;
    std::vector<std::shared_ptr<Request>> batch;
    while (!decodes_.empty() && batch.size() < options_.max_batch) {
      batch.push_back(std::move(decodes_.front()));
      decodes_.pop_front();
    }
    std::shared_ptr<Request> prefill;
    if (!prefills_.empty()) {
      prefill = std::move(prefills_.front());
      prefills_.pop_front();
    }
    // Counted before the work runs, so a caller that got its result sees its pass counted.
    if (!batch.empty()) {
      ++stats_.passes;
      stats_.decode_steps += static_cast<int64_t>(batch.size());
      if (batch.size() > 1) ++stats_.batched_passes;
      stats_.max_batch_seen = std::max<int64_t>(stats_.max_batch_seen, batch.size());
    }
    if (prefill) ++stats_.prefill_chunks;
    const bool steady =
        !prefill && prefills_.empty() && static_cast<int64_t>(batch.size()) >= active_;
    lock.unlock();
    if (!batch.empty()) run_decode_pass(batch, steady);
    if (prefill) run_prefill_chunk(prefill);
    lock.lock();
    // Unfinished prompts go to the back: prefills advance round-robin.
    if (prefill && prefill->fed < prefill->tokens.size()) prefills_.push_back(std::move(prefill));
  }
}

void DecodeBatcher::run_decode_pass(std::vector<std::shared_ptr<Request>>& batch, bool steady) {
  // Steps that bring their sampler are chosen in the pass; the others get their logits row.
  std::vector<std::shared_ptr<Request>> rows_back, chosen;
  for (auto& r : batch) (r->sampler ? chosen : rows_back).push_back(r);
  const auto inputs = [](const std::vector<std::shared_ptr<Request>>& part) {
    std::pair<std::vector<engine::ModelSequence*>, std::vector<int32_t>> in;
    for (const auto& r : part) {
      in.first.push_back(r->sequence);
      in.second.push_back(r->tokens[0]);
    }
    return in;
  };
  if (!rows_back.empty()) {
    const auto [seqs, tokens] = inputs(rows_back);
    std::vector<std::vector<float>> rows;
    try {
      rows = model_->decode_batch(seqs, tokens);
    } catch (...) {
      // decode_batch rolls every cache back on failure; each step is reported to its generation.
      for (auto& r : rows_back) r->done.set_exception(std::current_exception());
      rows_back.clear();
    }
    for (size_t i = 0; i < rows_back.size(); ++i)
      rows_back[i]->done.set_value({std::move(rows[i]), {}});
  }
  if (!chosen.empty()) {
    const auto [seqs, tokens] = inputs(chosen);
    std::vector<engine::Sampler*> samplers;
    std::vector<engine::TokenMask> masks;
    for (const auto& r : chosen) {
      samplers.push_back(r->sampler);
      masks.push_back(r->mask);
    }
    std::vector<engine::Model::BatchChoice> choices;
    try {
      // A pass that also brought logits rows back is not steady: their decode_batch would come
      // between this choice and the next.
      choices = model_->decode_batch_and_sample(seqs, tokens, samplers, masks,
                                                {.expect_same_batch = steady && rows_back.empty()});
    } catch (...) {
      for (auto& r : chosen) r->done.set_exception(std::current_exception());
      return;
    }
    for (size_t i = 0; i < chosen.size(); ++i) {
      if (choices[i].error)
        chosen[i]->done.set_exception(choices[i].error);
      else
        chosen[i]->done.set_value({{}, choices[i].sample});
    }
  }
}

void DecodeBatcher::run_prefill_chunk(const std::shared_ptr<Request>& r) {
  const size_t n = std::min(r->tokens.size() - r->fed, static_cast<size_t>(options_.prefill_chunk));
  try {
    r->last_logits = r->sequence->forward(std::span(r->tokens).subspan(r->fed, n));
  } catch (...) {
    r->fed = r->tokens.size();  // finished (failed): not requeued
    r->done.set_exception(std::current_exception());
    return;
  }
  r->fed += n;
  if (r->fed == r->tokens.size()) r->done.set_value({std::move(r->last_logits), {}});
}

}  // namespace agentrt
