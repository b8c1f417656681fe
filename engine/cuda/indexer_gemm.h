// The Lightning Indexer's scores for many rows of one sequence (prefill) as one float32 GEMM per
// slice of rows: every (row, head) query against every visible entry (the rows share the
// entries), then a kernel sums weight * relu(q . k) over the heads, keeping each row's visible
// entries. indexer.cu's kernel instead reads each entry once per row from shared memory, which
// is bound by shared-memory bandwidth once thousands of rows see thousands of entries.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/kernels.h"

namespace agentrt::engine::cuda {

class IndexerScoresGemm {
 public:
  // slice_bytes bounds the (row, head) x entry products held at once.
  explicit IndexerScoresGemm(int64_t slice_bytes = int64_t(512) << 20);
  ~IndexerScoresGemm();
  IndexerScoresGemm(const IndexerScoresGemm&) = delete;
  IndexerScoresGemm& operator=(const IndexerScoresGemm&) = delete;

  // indexer_scores() for rows that all read `entries` ([max_visible][head_dim], device): the
  // same scores up to the order of the float32 sums.
  void run(const float* q, const float* head_weights, float weight_scale, const LayerRow* rows,
           int64_t n, int64_t heads, int64_t head_dim, const float* entries, int64_t max_visible,
           float* scores, int64_t stride, cudaStream_t stream);

 private:
  int64_t slice_bytes_;
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer products_;
};

}  // namespace agentrt::engine::cuda
