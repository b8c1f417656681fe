// The routed experts' products for many rows (prefill) on tensor cores: the pairs already grouped
// by expert (moe.cu), a chunk of used experts' weights decoded to bf16 at a time, then one
// strided batched cuBLAS GEMM per chunk and matrix, every expert's rows padded to the chunk's
// largest count (one GEMM per expert would give each too few thread blocks to fill the GPU).
// The decode-sized path (moe.cu) streams the stored weights once per few rows instead, which for
// hundreds of rows per expert costs hundreds of passes of FP4 decoding on the CUDA cores.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/fp8_gemm.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/linear.h"

namespace agentrt::engine::cuda {

// The (row, expert) pairs of one call grouped by expert, in device memory (moe.cu's grouping).
struct ExpertSegments {
  const int32_t* order;      // [P] pair indices (row * k + j) sorted by expert
  const int32_t* active;     // [experts] the used experts
  const int32_t* seg_start;  // [experts + 1] their segments in `order`
  const int32_t* n_active;   // [1]
  int64_t experts = 0;
};

// An MXFP4 matrix of whole 128 x 128 blocks as e4m3 at q ([rows][cols]) with float32 block
// scales in rows of ld floats (padding zeroed): moe_fp8.cu's conversion (fp4_e4m3.h), for tests.
void convert_fp4_e4m3(const WeightMatrix& w, uint8_t* q, float* scales, int64_t ld,
                      cudaStream_t stream);

class ExpertGemm {
 public:
  // chunk_bytes bounds the decoded weights held at once: two buffers of half of it (whole
  // experts, at least one each), so the next chunk decodes on a second stream while this one's
  // products run.
  // fp4_kernel: FP4 experts of suitable shapes (fp4_gemm_fits) take fp4_gemm.cu's grouped
  // kernel, which decodes the stored weights in its loader, instead of bf16 copies and cuBLAS.
  // fp8_streams (GemmPrecision::fp8): 2 alternates the experts' GEMMs between two streams, so
  // one expert's GEMM (a few dozen thread blocks) runs beside the next one's.
  // priority_stream: a pass's gathers, GEMMs and scatters run on a stream of the highest
  // priority (work_stream_ below). Off by default: written after the last GPU run, unmeasured.
  // fp8_grouped_rows (GemmPrecision::fp8, sm_90): passes of at most this many rows take every
  // used expert's gate/up and down products as one launch each of grouped_fp8_gemm.cu's kernel,
  // which reads the FP4 weights as stored, instead of converted copies of all used experts and
  // one cuBLASLt GEMM per expert (0: never).
  // fp8_row_scales: that grouped path quantises each activation row under one scale and takes
  // each weight block's scale over its whole rows (GroupedExpertProduct::row_scales): no
  // per-step promotion in the kernel.
  explicit ExpertGemm(GemmPrecision precision, int64_t min_rows = 128,
                      int64_t chunk_bytes = int64_t(1) << 30, bool fp4_kernel = false,
                      int fp8_streams = 2, bool priority_stream = false,
                      int64_t fp8_grouped_rows = 0, bool fp8_row_scales = false);
  ~ExpertGemm();
  ExpertGemm(const ExpertGemm&) = delete;
  ExpertGemm& operator=(const ExpertGemm&) = delete;

  // Whether n rows of these experts take this path: enough rows, weights exact in bf16 (bf16,
  // FP4, FP8 with power-of-two scales) unless the precision is f32, widths that decode in
  // 8-value pieces, and no graph capture under way (the path reads the segment sizes back).
  bool applies(const ExpertsDevice& e, int64_t n, int64_t inter, int64_t hidden,
               cudaStream_t stream) const;

  // pair_out[i] = weights[order[i]] * expert(h[order[i] / k]) for every grouped pair i, with the
  // SwiGLU clamps of `limit` (0: none). Synchronises the stream once (segment sizes).
  // Returns how the rows were written: true as bf16 (set_pair_out_bf16, fp8_grouped's path only:
  // pair i's hidden values at reinterpret_cast<__nv_bfloat16*>(pair_out) + i * hidden, in the
  // first half of the float32 rows' memory), false as float32 (every other path; also a pass
  // with no pairs, which writes no rows).
  bool run(const ExpertsDevice& e, const ExpertSegments& s, const float* h, const float* weights,
           int64_t k, int64_t inter, int64_t hidden, float limit, float* pair_out,
           cudaStream_t stream);

  // Profiling: called with a stage name after each phase of run() (decode, gather, GEMMs,
  // SwiGLU, scatter), on run()'s stream; DeviceForward records its stage events there.
  void set_stage_marker(std::function<void(const char*)> mark) { mark_ = std::move(mark); }

  // fp8_grouped's path: the gate/up product writes bf16 instead of float32
  // (GroupedExpertProduct::out_bf16), halving the bytes it writes and the SwiGLU pass reads (that
  // pass took ~1.3 ms a layer of a 16K prefill on an H100, bound by reading the float32 pairs);
  // its e4m3 quantisation makes bf16's rounding immaterial. Off by default; the other paths
  // ignore it. Written without a GPU: its time is unmeasured.
  void set_gate_up_bf16(bool on) { gate_up_bf16_ = on; }

  // fp8_grouped's path: the down product writes the pairs' rows as bf16 (run() returns true)
  // instead of float32, halving the bytes it writes and the combine reads back (16K tokens x 6
  // pairs x 4,096 values: 1.6 GB a layer as float32). The products come from e4m3 activations,
  // already 3-8% off the exact ones: bf16's rounding (2^-9 of a value) is immaterial. Off by
  // default; the other paths ignore it (and return false). Written without a GPU: unmeasured.
  void set_pair_out_bf16(bool on) { pair_out_bf16_ = on; }

  // fp8_grouped's path under row scales: the SwiGLU and the tokens' quantisation take a block of
  // 128 threads a row (16 or 32 values a thread) instead of one warp holding the whole row (216
  // and 180 registers, one block of 8 warps an SM: the SwiGLU took 3.5 ms of a 16K prefill for
  // ~1 GB a layer; 1.6 ms this way on an H100); the same codes and scales. Off by default
  // (CudaOptions::fp8_block_rows turns it on).
  void set_block_rows(bool on) { block_rows_ = on; }

  // With set_block_rows: each token's quantised row goes straight into its slots' rows (and its
  // scale into theirs) instead of a token row that a second pass copies into the slots (0.8 GB
  // read and written a layer at 16K rows); the same bytes in every pair's slot row. Off by
  // default (CudaOptions::fp8_scatter_rows turns it on; the gather 1.7 -> 0.9 ms on an H200).
  void set_scatter_rows(bool on) { scatter_rows_ = on; }

  // Whether fp4_gemm.cu's kernel takes these experts' shapes (when asked for).
  static bool fp4_gemm_fits(const ExpertsDevice& e, int64_t inter, int64_t hidden);

  // GemmPrecision::fp8: runs on FP8 GEMMs (experts) and runs refused for want of a cuBLASLt
  // algorithm, which took the bf16 path (expert_fallbacks).
  LinearRunner::Fp8Counts fp8_counts() const { return fp8_counts_; }

 private:
  // run() through fp4_gemm.cu: `seg` the segment starts read back, `used` experts.
  void run_fp4(const ExpertsDevice& e, const ExpertSegments& s, const int32_t* seg, int64_t used,
               const float* h, const float* weights, int64_t k, int64_t inter, int64_t hidden,
               float limit, float* pair_out, cudaStream_t stream);

  // GemmPrecision::fp8 (moe_fp8.cu): MXFP4 experts as e4m3 with 128 x 128 block scales and one
  // block-scaled FP8 GEMM per expert and matrix. False, with nothing launched, where cuBLASLt
  // has no algorithm for one of the pass's shapes (run() then takes the bf16 path).
  bool fp8_fits(const ExpertsDevice& e, int64_t inter, int64_t hidden) const;
  bool run_fp8(const ExpertsDevice& e, const ExpertSegments& s, const int32_t* seg, int64_t used,
               const float* h, const float* weights, int64_t k, int64_t inter, int64_t hidden,
               float limit, float* pair_out, cudaStream_t stream);
  // fp8_grouped's path (moe_fp8.cu): the same quantised activations and weights as run_fp8, in
  // two grouped launches over all used experts; the pairs' rows as bf16 under pair_out_bf16_.
  void run_fp8_grouped(const ExpertsDevice& e, const ExpertSegments& s, const int32_t* seg,
                       int64_t used, const float* h, const float* weights, int64_t k, int64_t inter,
                       int64_t hidden, float limit, float* pair_out, cudaStream_t stream);

  // run_fp8's and run_fp8_grouped's activation, scale and product buffers for `slots` rows;
  // slot_outputs: also the down product's rows by slot (run_fp8 scatters them to the pairs);
  // gate_up_value_bytes: 4 (float32) or 2 (bf16, set_gate_up_bf16) a gate/up product value.
  void reserve_fp8_slots(int64_t slots, int64_t inter, int64_t hidden, bool slot_outputs,
                         int64_t gate_up_value_bytes);

  void mark(const char* name) const {  // a profiling stage ends (set_stage_marker)
    if (mark_) mark_(name);
  }

  GemmPrecision precision_;
  // GemmPrecision::fp8 only: one per stream the experts' GEMMs alternate between (each its own
  // workspace), the second stream's, and the events that join it to run()'s stream.
  std::unique_ptr<Fp8Gemm> fp8_[2];
  int fp8_streams_ = 1;
  int64_t fp8_grouped_rows_ = 0;  // the constructor's, 0 where the device lacks the kernel
  bool fp8_row_scales_ = false;   // the constructor's
  bool gate_up_bf16_ = false;     // set_gate_up_bf16's
  bool pair_out_bf16_ = false;    // set_pair_out_bf16's
  bool block_rows_ = false;       // set_block_rows's
  bool scatter_rows_ = false;     // set_scatter_rows's
  int sms_ = 0;                   // the device's multiprocessors (the grouped kernel's grid)
  cudaStream_t fp8_side_ = nullptr;
  cudaEvent_t fp8_fork_ = nullptr, fp8_join_ = nullptr;
  // A pass's gathers, GEMMs and scatters run on work_stream_, of the highest priority, joined to
  // the caller's stream by enter_ / leave_: the GPU then dispatches their blocks ahead of the
  // next chunk's weight conversion on decode_stream_ (default priority), queued before them. On
  // one priority the gathers waited for whole conversions (the 16K prefill's profile, fifteenth
  // session). Profiling marks the caller's stream, so a profiled pass stays on it. Null (the
  // pass on the caller's stream) unless asked for.
  cudaStream_t work_stream_ = nullptr;
  cudaEvent_t enter_ = nullptr, leave_ = nullptr;
  cudaStream_t enter(cudaStream_t caller);
  void leave(cudaStream_t work, cudaStream_t caller);
  // run()'s bf16 path (the weights decoded to bf16 chunk by chunk, strided batched cuBLAS GEMMs).
  void run_bf16(const ExpertsDevice& e, const ExpertSegments& s, const int32_t* seg, int64_t used,
                const float* h, const float* weights, int64_t k, int64_t inter, int64_t hidden,
                float limit, float* pair_out, cudaStream_t stream);
  LinearRunner::Fp8Counts fp8_counts_;
  // run_fp8's converted weights (two chunks' worth), activation scales and padded row starts
  DeviceBuffer q13_[2], q2_[2], s13_[2], s2_[2], xs_, as_, pad_;
  DeviceBuffer block_max_;  // run_fp8_grouped's weight blocks' largest codes
  DeviceBuffer tq_, ts_;    // its tokens' rows quantised once under row scales, their scales
  DeviceBuffer pair_slot_;  // set_scatter_rows: each pair's slot row
  std::function<void(const char*)> mark_;
  int64_t min_rows_, chunk_bytes_;
  bool fp4_kernel_ = false;
  DeviceBuffer tiles_;          // fp4_gemm.cu's tile lists
  void* host_tiles_ = nullptr;  // pinned staging of them
  int64_t host_tile_bytes_ = 0;
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer w13_[2], w2_[2], place_, x_, gate_up_, act_, down_;
  cudaStream_t decode_stream_ = nullptr;
  cudaEvent_t start_ = nullptr, decoded_[2] = {}, consumed_[2] = {};
  // pinned: n_active, seg_start, run_fp8's padded starts (and run_fp8_grouped's tile starts)
  int32_t* host_ = nullptr;
  int64_t host_ints_ = 0;
};

}  // namespace agentrt::engine::cuda
