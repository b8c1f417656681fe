// How the forward pass spreads work over cores. The kernels take a Parallel& and split a range;
// the model owns the implementation (a worker pool, or Serial for tests and tiny shapes).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace agentrt::engine {

class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual int threads() const = 0;
  // Calls fn(begin, end) over disjoint pieces covering [0, n); returns when all are done.
  virtual void for_range(int64_t n, const std::function<void(int64_t, int64_t)>& fn) const = 0;
};

class Serial final : public Parallel {
 public:
  int threads() const override { return 1; }
  void for_range(int64_t n, const std::function<void(int64_t, int64_t)>& fn) const override {
    if (n > 0) fn(0, n);
  }
};

// A fixed set of worker threads; the calling thread works too. One for_range at a time (calls are
// serialised), which is all the forward pass needs. The range is cut into a few chunks per thread
// that participants claim from an atomic counter, so a worker the OS has not scheduled (the
// machine is shared) never holds the caller up: the caller simply takes its chunks. Workers spin
// briefly before sleeping, since a decode step issues hundreds of small parallel sections.
class WorkerPool final : public Parallel {
 public:
  explicit WorkerPool(int threads);  // <= 0: hardware concurrency
  ~WorkerPool() override;
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int threads() const override { return int(workers_.size()) + 1; }
  void for_range(int64_t n, const std::function<void(int64_t, int64_t)>& fn) const override;

 private:
  void worker_loop();
  void run_chunks() const;

  std::vector<std::thread> workers_;
  mutable std::mutex call_mutex_;  // serialises for_range calls
  mutable std::mutex mutex_;
  mutable std::condition_variable wake_;
  // The open job.
  mutable const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  mutable int64_t job_n_ = 0;
  mutable int64_t chunks_ = 0;
  mutable std::atomic<int64_t> next_{0};
  mutable std::atomic<bool> open_{false};
  mutable std::atomic<int> active_{0};
  mutable std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace agentrt::engine
