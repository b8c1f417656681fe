#include "engine/cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>

#include "engine/cuda/device_matrix.h"
#include "engine/parallel.h"

namespace agentrt::engine {
namespace {

class CudaModel;

// The allowed tokens within this many temperatures of the best are collected for sampling:
// anything further has relative probability < e^-20 (2e-9) and is left out; if more than
// CudaOptions::near_capacity tokens are that close, the device sorts every allowed token instead.
constexpr float kNearTemperatures = 20.0f;

// How the device chooses for a sampler: greedy rows get the pick only, sampling rows also the
// tokens within kNearTemperatures temperatures of the best.
cuda::DeviceForward::RowPick row_pick(const SamplingParams& p) {
  if (p.greedy()) return {};
  return {1.0f / p.temperature, kNearTemperatures * p.temperature};
}

// The sampler's choice from what the device read back for a logits row: the pick, or a draw
// among the candidates, or (more than `capacity` candidates) a draw among every allowed token,
// sorted on the device (`sorted`, read back by the caller): the same draw as Sampler::sample on
// the whole row.
Sampler::Sample choose(const cuda::DeviceForward::NearBest& r, const SamplingParams& params,
                       Sampler& sampler, std::span<const std::pair<float, int32_t>> sorted,
                       int32_t capacity) {
  if (r.pick.allowed == 0) throw std::invalid_argument("sampler: the token mask allows no token");
  if (params.greedy()) return {r.pick.token, float(-std::log(r.pick.z))};
  if (r.total <= capacity) return sampler.sample_candidates(r.cand, r.pick.z);
  return sampler.sample_sorted_candidates(sorted, 0.0);
}

// Whether choose() wants the row's allowed tokens sorted on the device.
bool needs_sorted(const cuda::DeviceForward::NearBest& r, const SamplingParams& params,
                  int32_t capacity) {
  return r.pick.allowed > 0 && !params.greedy() && r.total > capacity;
}

class CudaSequence final : public ModelSequence {
 public:
  // Takes a retired sequence's caches where the model keeps one (CudaModel::take_cache) and
  // hands its own back when it goes.
  explicit CudaSequence(const CudaModel& model);
  ~CudaSequence() override;
  CudaSequence(const CudaSequence&) = delete;
  CudaSequence& operator=(const CudaSequence&) = delete;

  std::vector<float> forward(std::span<const int32_t> tokens, bool all_positions) override;
  Sampler::Sample forward_and_sample(std::span<const int32_t> tokens, Sampler& sampler,
                                     TokenMask mask) override;
  int64_t length() const override { return cache_.length; }
  void truncate(int64_t new_length) override {
    if (new_length < 0 || new_length > cache_.length)
      throw std::out_of_range("ModelSequence::truncate: length " + std::to_string(new_length) +
                              " outside [0, " + std::to_string(cache_.length) + "]");
    ahead_.reset();
    cache_.length = new_length;  // later rows overwrite; entries derive from raw rows only
  }

  const CudaModel& model() const { return model_; }
  cuda::DeviceSequenceCache& cache() { return cache_; }

 private:
  // The choice on the last logits row of the last run (under the model's lock), made on the
  // device where it can be; a greedy choice also queues the next step, fed with the picked token
  // on the device, before the host waits for the pick (CudaOptions::decode_ahead).
  Sampler::Sample choose_and_queue(cuda::DeviceForward& pass, Sampler& sampler, TokenMask mask);

  // A step queued by the last choice: `token` fed at position `pos` by the model's run number
  // `run`. Not counted in cache_.length until a call feeds that token (its rows are overwritten
  // otherwise, as after truncate). Valid only while no other run has come since.
  struct Ahead {
    int32_t token = 0;
    int64_t pos = 0;
    uint64_t run = 0;
  };

  const CudaModel& model_;
  cuda::DeviceSequenceCache cache_;
  std::optional<Ahead> ahead_;
};

class CudaModel final : public Model {
 public:
  // The options are checked before the weights go to the device.
  CudaModel(ForwardConfig config, const ForwardWeights& weights, const cuda::CudaOptions& options)
      : pass_(std::move(config), weights, checked(options)),
        spare_caches_(size_t(options.spare_caches)),
        prefill_rows_(options.prefill_rows),
        near_capacity_(options.near_capacity),
        parallel_draw_tokens_(options.parallel_draw_tokens),
        decode_ahead_(options.decode_ahead) {}
  int64_t prefill_rows() const { return prefill_rows_; }
  int32_t near_capacity() const { return near_capacity_; }
  bool decode_ahead() const { return decode_ahead_; }

  const ForwardConfig& config() const override { return pass_.config(); }
  int32_t vocab_size() const override { return int32_t(pass_.config().vocab_size); }
  std::unique_ptr<ModelSequence> new_sequence() const override {
    return std::make_unique<CudaSequence>(*this);
  }

  // A new sequence's caches: the largest retired one's, emptied, where one is kept
  // (CudaOptions::spare_caches), else new ones. A 16K prefill's first pass spent 2 ms in the
  // cudaMallocs of a new sequence's ~20 buffers (host.reserve, H100). Reuse is safe in stream
  // order: every pass runs on the model's stream, so a new sequence's work follows whatever the
  // old one queued, and the new one reads no row before writing it (length 0).
  cuda::DeviceSequenceCache take_cache() const {
    std::lock_guard<std::mutex> lock(spare_mutex_);
    if (spares_.empty()) return cuda::DeviceSequenceCache(pass_.config());
    cuda::DeviceSequenceCache cache = std::move(spares_.back());
    spares_.pop_back();
    cache.length = 0;
    return cache;
  }
  // A going sequence's caches, kept if fewer than spare_caches are (the largest ones kept).
  void retire_cache(cuda::DeviceSequenceCache&& cache) const {
    if (spare_caches_ == 0 || cache.capacity() == 0) return;
    std::lock_guard<std::mutex> lock(spare_mutex_);
    spares_.push_back(std::move(cache));
    std::sort(spares_.begin(), spares_.end(),
              [](const auto& a, const auto& b) { return a.capacity() < b.capacity(); });
    if (spares_.size() > spare_caches_) spares_.erase(spares_.begin());
  }

  // One forward at a time: the workspace and the stream are shared.
  void run(std::span<const cuda::DeviceRow> rows, float* logits) const {
    std::lock_guard<std::mutex> lock(mutex_);
    pass_.run(rows, logits);
  }
  // run() with the logits left on the device, then `then(pass)` on them, under the same lock
  // (another sequence's run would overwrite them).
  template <class Then>
  auto run_then(std::span<const cuda::DeviceRow> rows, Then then) const {
    std::lock_guard<std::mutex> lock(mutex_);
    pass_.run(rows, nullptr);
    return then(pass_);
  }
  // then(pass) under the lock, no run first.
  template <class Then>
  auto locked(Then then) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return then(pass_);
  }

  std::vector<std::vector<float>> decode_batch(std::span<ModelSequence* const> seqs,
                                               std::span<const int32_t> tokens) const override {
    std::vector<cuda::DeviceRow> rows = batch_rows(seqs, tokens);
    std::vector<std::vector<float>> out(rows.size(), std::vector<float>(size_t(vocab_size())));
    std::vector<float*> dst;
    for (auto& row : out) dst.push_back(row.data());
    run_then(rows, [&](cuda::DeviceForward& pass) { pass.read_logits(dst); });
    for (auto& r : rows) r.cache->length += 1;
    return out;
  }

  std::vector<BatchChoice> decode_batch_and_sample(
      std::span<ModelSequence* const> seqs, std::span<const int32_t> tokens,
      std::span<Sampler* const> samplers, std::span<const TokenMask> masks,
      const BatchChoiceOptions& options) const override {
    check_batch_choice_args(seqs.size(), samplers, masks);
    const auto own = own_batch_sequences<CudaSequence>(*this, seqs, tokens.size());
    std::vector<cuda::DeviceRow> rows = batch_rows(own, tokens);
    const size_t n = rows.size();
    std::vector<BatchChoice> out(n);
    std::lock_guard<std::mutex> lock(mutex_);
    // The step queued by the last call, if it fed these sequences these tokens: its logits row
    // of each sequence; else run the step.
    std::optional<std::vector<int64_t>> queued = queued_batch_rows(own, tokens);
    batch_ahead_.reset();
    if (!queued) pass_.run(rows, nullptr);
    for (auto& r : rows) r.cache->length += 1;  // fed, whatever the choices do
    // One launch per greedy row and two per sampling row (the pick, then the tokens near the
    // best), one read back for the batch.
    std::vector<TokenMask> row_masks(masks.begin(), masks.end());
    row_masks.resize(n);  // no masks: none for every row
    std::vector<cuda::DeviceForward::RowPick> how(n);
    bool greedy = true;
    for (size_t i = 0; i < n; ++i) {
      how[i] = row_pick(samplers[i]->params());
      greedy = greedy && samplers[i]->params().greedy();
    }
    pass_.enqueue_picks(row_masks, how, near_capacity_, 0,
                        queued ? std::span<const int64_t>(*queued) : std::span<const int64_t>());
    std::optional<BatchAhead> queued_ahead;
    if (decode_ahead_ && options.expect_same_batch && greedy) {
      // The next step, each row fed its pick on the device, before waiting for the picks.
      std::vector<cuda::DeviceRow> next;
      BatchAhead ahead;
      for (size_t i = 0; i < n; ++i) {
        next.push_back({&own[i]->cache(), own[i]->cache().length, 0, true, pass_.device_pick(i)});
        ahead.seqs.push_back(own[i]);
        ahead.pos.push_back(own[i]->cache().length);
      }
      pass_.run(next, nullptr);
      ahead.run = pass_.runs();
      queued_ahead = std::move(ahead);
    }
    const auto near = pass_.collect_picks();
    if (queued_ahead) {               // known once the picks are back
      for (size_t i = 0; i < n; ++i)  // a row without a token fed a placeholder: never matches
        queued_ahead->tokens.push_back(near[i].pick.allowed > 0 ? near[i].pick.token : -1);
      batch_ahead_ = std::move(queued_ahead);
    }
    // Rows with too many near tokens read every allowed token back, sorted on the device (one
    // sort and one read back for all of them), then every row draws; those draws are the step's
    // host work (an exp per allowed token of a sorted row), spread over threads.
    // Each row's sorted list, held by pass_ until its next sort (the lock is held throughout).
    std::vector<std::span<const std::pair<float, int32_t>>> sorted(n);
    std::vector<int64_t> sort_rows, sort_logits;  // the batch's rows, their logits rows
    std::vector<TokenMask> sort_masks;
    std::vector<int32_t> sort_counts;
    for (size_t i = 0; i < n; ++i)
      if (needs_sorted(near[i], samplers[i]->params(), near_capacity_)) {
        sort_rows.push_back(int64_t(i));
        sort_logits.push_back(queued ? (*queued)[i] : int64_t(i));
        sort_masks.push_back(row_masks[i]);
        sort_counts.push_back(near[i].pick.allowed);
      }
    int64_t host_work = 0;
    if (!sort_rows.empty()) {
      try {
        const auto lists = pass_.sorted_allowed(sort_logits, sort_masks, sort_counts);
        for (size_t j = 0; j < sort_rows.size(); ++j) {
          host_work += int64_t(lists[j].size());
          sorted[size_t(sort_rows[j])] = lists[j];
        }
      } catch (...) {
        for (int64_t r : sort_rows) out[size_t(r)].error = std::current_exception();
      }
    }
    auto draw = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (out[i].error) continue;
        try {
          out[i].sample =
              choose(near[i], samplers[i]->params(), *samplers[i], sorted[i], near_capacity_);
        } catch (...) {
          out[i].error = std::current_exception();
        }
      }
    };
    // A sampler given for two rows draws for them in row order (its generator is shared).
    const bool distinct =
        std::unordered_set<Sampler*>(samplers.begin(), samplers.end()).size() == n;
    if (host_work < parallel_draw_tokens_ || n < 2 || !distinct) {
      draw(0, int64_t(n));
    } else {
      if (!draw_pool_) draw_pool_ = std::make_unique<WorkerPool>(draw_threads());
      draw_pool_->for_range(int64_t(n), draw);
    }
    return out;
  }

  std::map<std::string, double> stage_ms() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pass_.stage_ms();
  }
  cuda::LinearRunner::Fp8Counts fp8_counts() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pass_.fp8_counts();
  }
  cuda::TakenPicks taken_picks() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pass_.taken_picks();
  }

 private:
  static const cuda::CudaOptions& checked(const cuda::CudaOptions& options) {
    if (options.prefill_rows < 1)
      throw std::invalid_argument("cuda options: prefill_rows must be at least 1, got " +
                                  std::to_string(options.prefill_rows));
    if (options.near_capacity < 1)
      throw std::invalid_argument("cuda options: near_capacity must be at least 1, got " +
                                  std::to_string(options.near_capacity));
    if (options.spare_caches < 0 || options.spare_caches > 64)
      throw std::invalid_argument("cuda options: spare_caches must be 0 to 64, got " +
                                  std::to_string(options.spare_caches));
    if (options.gemv_sum_group < 1 || options.gemv_sum_group > 4)
      throw std::invalid_argument("cuda options: gemv_sum_group must be 1 to 4, got " +
                                  std::to_string(options.gemv_sum_group));
    return options;
  }

  // One row per sequence, each fed one token; the sequences distinct and made by this model.
  std::vector<cuda::DeviceRow> batch_rows(std::span<ModelSequence* const> seqs,
                                          std::span<const int32_t> tokens) const {
    return batch_rows(own_batch_sequences<CudaSequence>(*this, seqs, tokens.size()), tokens);
  }
  static std::vector<cuda::DeviceRow> batch_rows(const std::vector<CudaSequence*>& own,
                                                 std::span<const int32_t> tokens) {
    std::vector<cuda::DeviceRow> rows;
    for (size_t i = 0; i < own.size(); ++i)
      rows.push_back({&own[i]->cache(), own[i]->cache().length, tokens[i], true});
    return rows;
  }

  // A batch step queued by decode_batch_and_sample (expect_same_batch): the sequences in its
  // rows' order, the positions and the tokens it fed them (-1: none), and its run number.
  struct BatchAhead {
    std::vector<const CudaSequence*> seqs;
    std::vector<int64_t> pos;
    std::vector<int32_t> tokens;
    uint64_t run = 0;
  };
  // With the lock held: the queued step's logits row of each of `own` if it fed exactly these
  // sequences these tokens at their current lengths and no run came since, else nothing.
  std::optional<std::vector<int64_t>> queued_batch_rows(const std::vector<CudaSequence*>& own,
                                                        std::span<const int32_t> tokens) const {
    if (!batch_ahead_ || batch_ahead_->run != pass_.runs() ||
        batch_ahead_->seqs.size() != own.size())
      return std::nullopt;
    const BatchAhead& a = *batch_ahead_;
    std::vector<int64_t> rows(own.size());
    for (size_t i = 0; i < own.size(); ++i) {
      const auto at = std::find(a.seqs.begin(), a.seqs.end(), own[i]);
      if (at == a.seqs.end()) return std::nullopt;
      const size_t j = size_t(at - a.seqs.begin());
      if (a.tokens[j] != tokens[i] || a.pos[j] != own[i]->cache().length) return std::nullopt;
      rows[i] = int64_t(j);
    }
    return rows;
  }

  // Threads for the host draws of a batch's sorted rows, made on first use.
  static int draw_threads() { return int(std::clamp(std::thread::hardware_concurrency(), 1u, 8u)); }

  mutable std::mutex mutex_;
  mutable std::unique_ptr<WorkerPool> draw_pool_;
  mutable std::optional<BatchAhead> batch_ahead_;
  mutable cuda::DeviceForward pass_;
  mutable std::mutex spare_mutex_;  // spares_ only (sequences come and go outside runs)
  mutable std::vector<cuda::DeviceSequenceCache> spares_;  // by capacity, largest last
  size_t spare_caches_;
  int64_t prefill_rows_;
  int32_t near_capacity_;
  int64_t parallel_draw_tokens_;
  bool decode_ahead_;
};

CudaSequence::CudaSequence(const CudaModel& model) : model_(model), cache_(model.take_cache()) {}

CudaSequence::~CudaSequence() { model_.retire_cache(std::move(cache_)); }

std::vector<float> CudaSequence::forward(std::span<const int32_t> tokens, bool all_positions) {
  ahead_.reset();  // its rows are overwritten
  if (tokens.empty()) return {};
  // Slices bound the activations; the caches make the result the same as one pass.
  const int64_t n = int64_t(tokens.size()), V = model_.vocab_size();
  std::vector<float> logits((all_positions ? n : 1) * V);
  const int64_t start = cache_.length;
  try {
    for (int64_t begin = 0; begin < n; begin += model_.prefill_rows()) {
      const int64_t end = std::min(n, begin + model_.prefill_rows());
      std::vector<cuda::DeviceRow> rows;
      rows.reserve(size_t(end - begin));
      for (int64_t i = begin; i < end; ++i)
        rows.push_back(
            {&cache_, cache_.length + (i - begin), tokens[i], all_positions || i == n - 1});
      model_.run(rows, all_positions ? logits.data() + begin * V : logits.data());
      cache_.length += end - begin;
    }
  } catch (...) {
    cache_.length = start;  // all or nothing
    throw;
  }
  return logits;
}

Sampler::Sample CudaSequence::choose_and_queue(cuda::DeviceForward& pass, Sampler& sampler,
                                               TokenMask mask) {
  const int32_t capacity = model_.near_capacity();
  const cuda::DeviceForward::RowPick how = row_pick(sampler.params());
  ahead_.reset();
  pass.enqueue_picks({&mask, 1}, {&how, 1}, capacity, -1);
  std::optional<Ahead> queued;
  if (model_.decode_ahead() && sampler.params().greedy()) {
    // The next step, fed on the device: it runs while the host reads the pick back, returns it
    // and works out the next mask; the next call finds it done if it feeds the picked token.
    const cuda::DeviceRow row{&cache_, cache_.length, 0, true, pass.device_pick(0)};
    pass.run({&row, 1}, nullptr);
    queued = Ahead{0, cache_.length, pass.runs()};
  }
  const auto near = pass.collect_picks();
  if (queued && near[0].pick.allowed > 0) {  // no token: the queued step fed a placeholder
    queued->token = near[0].pick.token;
    ahead_ = queued;
  }
  std::span<const std::pair<float, int32_t>> sorted;  // held by pass until its next sort
  if (needs_sorted(near[0], sampler.params(), capacity)) {
    const int64_t last = -1;
    const int32_t allowed = near[0].pick.allowed;
    sorted = pass.sorted_allowed({&last, 1}, {&mask, 1}, {&allowed, 1})[0];
  }
  return choose(near[0], sampler.params(), sampler, sorted, capacity);
}

Sampler::Sample CudaSequence::forward_and_sample(std::span<const int32_t> tokens, Sampler& sampler,
                                                 TokenMask mask) {
  if (tokens.empty()) return ModelSequence::forward_and_sample(tokens, sampler, mask);
  if (ahead_ && tokens.size() == 1 && tokens[0] == ahead_->token && ahead_->pos == cache_.length) {
    // The token is fed already if no other run has overwritten the queued step's logits since.
    const Ahead queued = *ahead_;
    std::optional<Sampler::Sample> chosen =
        model_.locked([&](cuda::DeviceForward& pass) -> std::optional<Sampler::Sample> {
          if (pass.runs() != queued.run) return std::nullopt;
          cache_.length += 1;  // fed, whatever the choice does
          return choose_and_queue(pass, sampler, mask);
        });
    if (chosen) return *chosen;
  }
  ahead_.reset();
  // The last slice's run and the choice on its logits (under the model's lock).
  const int64_t n = int64_t(tokens.size()), start = cache_.length;
  Sampler::Sample chosen{};
  bool fed = false;
  try {
    for (int64_t begin = 0; begin < n; begin += model_.prefill_rows()) {
      const int64_t end = std::min(n, begin + model_.prefill_rows());
      std::vector<cuda::DeviceRow> rows;
      rows.reserve(size_t(end - begin));
      for (int64_t i = begin; i < end; ++i)
        rows.push_back({&cache_, cache_.length + (i - begin), tokens[i], i == n - 1});
      if (end == n) {
        chosen = model_.run_then(rows, [&](cuda::DeviceForward& pass) {
          cache_.length += end - begin;  // fed, whatever the choice does
          fed = true;
          return choose_and_queue(pass, sampler, mask);
        });
      } else {
        model_.run(rows, nullptr);
        cache_.length += end - begin;
      }
    }
  } catch (...) {
    if (!fed) cache_.length = start;  // all or nothing; a failed choice keeps what was fed
    throw;
  }
  return chosen;
}

}  // namespace

std::shared_ptr<const Model> load_cuda_model(const std::filesystem::path& dir,
                                             const LoadOptions& options,
                                             const cuda::CudaOptions& cuda_options) {
  std::string why;
  if (!cuda::device_available(&why))
    throw std::runtime_error("Model::load(" + dir.string() + ", cuda): " + why);
  (void)options;  // threads: the GPU path uses none
  ForwardConfig config = ForwardConfig::from_file(dir / "config.json");
  const ForwardWeights weights = ForwardWeights::load(dir, config);
  return std::make_shared<CudaModel>(std::move(config), weights, cuda_options);
}

std::map<std::string, double> cuda_stage_ms(const Model& model) {
  const auto* m = dynamic_cast<const CudaModel*>(&model);
  return m ? m->stage_ms() : std::map<std::string, double>{};
}

cuda::LinearRunner::Fp8Counts cuda_fp8_counts(const Model& model) {
  const auto* m = dynamic_cast<const CudaModel*>(&model);
  return m ? m->fp8_counts() : cuda::LinearRunner::Fp8Counts{};
}

cuda::TakenPicks cuda_taken_picks(const Model& model) {
  const auto* m = dynamic_cast<const CudaModel*>(&model);
  return m ? m->taken_picks() : cuda::TakenPicks{};
}

std::shared_ptr<const Model> load_cuda_model(const std::filesystem::path& dir,
                                             const LoadOptions& options) {
  return load_cuda_model(dir, options, cuda::CudaOptions{});
}

}  // namespace agentrt::engine
