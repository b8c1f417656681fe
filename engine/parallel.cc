#include "engine/parallel.h"

#include <immintrin.h>

#include <algorithm>

namespace agentrt::engine {
namespace {

constexpr int kSpins = 4000;  // a few microseconds of spinning before sleeping / yielding

}  // namespace

WorkerPool::WorkerPool(int threads) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void WorkerPool::run_chunks() const {
  for (;;) {
    const int64_t c = next_.fetch_add(1);
    if (c >= chunks_) return;
    const int64_t begin = job_n_ * c / chunks_, end = job_n_ * (c + 1) / chunks_;
    if (begin < end) (*job_)(begin, end);
  }
}

void WorkerPool::worker_loop() {
  uint64_t seen = generation_.load();
  for (;;) {
    int spins = 0;
    // Spin, yielding the core now and then: on a busy machine the thread we wait for may share
    // our core, and pure spinning would starve it.
    while (generation_.load() == seen && !stop_.load() && spins < kSpins) {
      if (++spins % 64 == 0)
        std::this_thread::yield();
      else
        _mm_pause();
    }
    if (generation_.load() == seen && !stop_.load()) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
    }
    if (stop_.load()) return;
    seen = generation_.load();
    // Register before checking the job is still open: the caller closes it and then waits for
    // active_ to drain, so a late worker either sees it closed or is waited for.
    active_.fetch_add(1);
    if (open_.load() && generation_.load() == seen) run_chunks();
    active_.fetch_sub(1);
  }
}

void WorkerPool::for_range(int64_t n, const std::function<void(int64_t, int64_t)>& fn) const {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  std::lock_guard call(call_mutex_);
  job_ = &fn;
  job_n_ = n;
  chunks_ = std::min<int64_t>(n, 4 * threads());
  next_.store(0);
  open_.store(true);
  {
    // Under the mutex so a worker between its predicate check and its wait cannot miss it.
    std::lock_guard lock(mutex_);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  run_chunks();
  open_.store(false);
  int spins = 0;
  while (active_.load() != 0) {
    if (++spins % 64 == 0)
      std::this_thread::yield();
    else
      _mm_pause();
  }
}

}  // namespace agentrt::engine
