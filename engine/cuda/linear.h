// y = x W^T on the GPU for any number of rows: the decode GEMV (device_matrix.h, weights decoded
// in the kernel) for a few rows, cuBLAS for many (the weight dequantised into a scratch buffer,
// float32 accumulation and output). Strides are in floats, so column slices of activations work.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/fp8_gemm.h"
#include "engine/matmul.h"

namespace agentrt::engine::cuda {

enum class GemmPrecision {
  // Tensor cores with activations split into two bf16 terms (hi + lo, ~16 significant bits):
  // two bf16 products, float32-like results where the weights are exact in bf16 (bf16, FP8
  // with ue8m0 scales, FP4); other weights are split too (a third product). The default.
  bf16x2,
  bf16,  // one bf16 product: fastest, ~1e-2 relative on logits of small models
  f32,   // float32 SGEMM, no TF32
  // Products of more rows than the GEMV takes (prefill, large decode batches) with FP8 weights
  // (128 x 128 block scales) as cuBLASLt block-scaled FP8 GEMMs, the activations quantised to
  // e4m3 per row and 128 columns (fp8_gemm.h, DeepSeek's own scheme): no dequantised weight copy
  // and twice bf16's tensor-core rate, ~1e-2 relative error per product. Other weights, the
  // experts' GEMMs and the prefill attention run as bf16; the GEMV's products as under bf16x2.
  fp8,
};

// "bf16x2", "bf16", "f32" or "fp8"; throws std::invalid_argument naming the accepted ones.
GemmPrecision parse_gemm_precision(const std::string& name);

class LinearRunner {
 public:
  // gemv_mode: how the decode products run (GemvMode; tensor_cores is set from the precision:
  // off for f32). Its several_rows also sends decode batches' bf16 head through run_stacked.
  LinearRunner(GemmPrecision precision, int64_t gemv_max_rows, GemvMode gemv_mode = {});
  ~LinearRunner();
  LinearRunner(const LinearRunner&) = delete;
  LinearRunner& operator=(const LinearRunner&) = delete;

  void run(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
           int64_t y_stride, cudaStream_t stream);
  void run(const WeightMatrix& w, const float* x, int64_t n, float* y, cudaStream_t stream) {
    run(w, x, w.cols, n, y, w.rows, stream);
  }
  // Products of the same activations x [n][cols]: while n is decode-sized (and the matrices
  // share their column count, at most kMaxGemvProducts of them) one GEMV launch for all, else run()
  // each.
  struct Product {
    WeightMatrix w;
    float* y;  // [n][w.rows]
    // y holds bf16 rows [n][w.rows] instead, written by the FP8 GEMM (run_same_input only, and
    // only where fp8_writes_bf16 said the product takes it).
    bool bf16_out = false;
  };
  void run_same_input(std::span<const Product> products, const float* x, int64_t n,
                      cudaStream_t stream);
  // run_same_input of x RMSNormed (weight, eps) first: one row on gemv_warp_rows has it normed
  // on its way into shared memory (no launch of its own; x is left as it was); otherwise
  // rms_norm_rows writes the normed rows over x first.
  void run_same_input_normed(std::span<const Product> products, float* x, const float* weight,
                             float eps, int64_t n, cudaStream_t stream);
  // Block-diagonal: w's rows in `groups` equal groups, group g reading columns [g * w.cols,
  // (g + 1) * w.cols) of x's rows and writing its rows of y (one launch when decoding).
  void run_grouped(const WeightMatrix& w, int64_t groups, const float* x, int64_t x_stride,
                   int64_t n, float* y, int64_t y_stride, cudaStream_t stream);
  // Whether run_same_input can write w's product of n rows as bf16 rows at y (Product::bf16_out):
  // GemmPrecision::fp8, more than gemv_max_rows rows, and cuBLASLt has FP8 GEMMs with bf16
  // output for the shapes.
  bool fp8_writes_bf16(const WeightMatrix& w, int64_t n, const void* y, cudaStream_t stream);
  // run_grouped's product of n rows that a kernel of the caller's quantises (the prefill
  // attention's epilogue writes wo_a's input so: CudaOptions::attention_fp8_out): where it runs as
  // FP8 GEMMs (GemmPrecision::fp8, more than gemv_max_rows rows, shapes cuBLASLt takes), room
  // for the rows, valid until the next product; else nullopt (then run_grouped on float rows).
  std::optional<fp8_act_quant::RowsOut> fp8_rows_room(const WeightMatrix& w, int64_t groups,
                                                      int64_t n, const float* y, int64_t y_stride,
                                                      cudaStream_t stream);
  // The product of the rows the caller wrote into that room.
  void run_grouped_quantised(const WeightMatrix& w, int64_t groups,
                             const fp8_act_quant::RowsOut& rows, int64_t n, float* y,
                             int64_t y_stride, cudaStream_t stream);

  // Under GemmPrecision::fp8: the prefill products that ran as FP8 GEMMs, and those of FP8 weights
  // that fell back to bf16 (shapes cuBLASLt has no FP8 algorithm for).
  struct Fp8Counts {
    // FP8 weights' products: as FP8 GEMMs, refused by cuBLASLt's heuristic (bf16 instead), and
    // of shapes the FP8 GEMMs do not take (Fp8Gemm::fits: rows not whole 128-row blocks; bf16).
    int64_t fp8 = 0, fallbacks = 0, unfit = 0;
    int64_t experts = 0, expert_fallbacks = 0;  // routed experts' passes (ExpertGemm)
    std::vector<std::string> refused;           // the products' shapes cuBLASLt refused
  };
  Fp8Counts fp8_counts() const {
    Fp8Counts c = fp8_counts_;
    if (fp8_) c.refused = fp8_->refused_shapes();
    return c;
  }

  // How the decode products run now (GemvMode).
  GemvMode gemv_mode() const { return gemv_mode_; }
  // The streamed one-row products' grid cap from now on (GemvMode::max_blocks; 0: one block
  // per SM): DeviceForward sets it around products it runs beside others.
  void set_max_blocks(int blocks) { gemv_mode_.max_blocks = blocks; }
  // The streamed one-row products' shared memory cap from now on (GemvMode::max_shared; 0: none).
  void set_max_shared(int64_t bytes) { gemv_mode_.max_shared = bytes; }

 private:
  // The tensor-core GEMMs of run() (groups = 1) and run_grouped(): w dequantised to bf16 (and its
  // low part where not exact in bf16) and x's rows converted once, then one GEMM per term,
  // strided batched over the groups.
  void run_bf16(const WeightMatrix& w, int64_t groups, const float* x, int64_t x_stride, int64_t n,
                float* y, int64_t y_stride, cudaStream_t stream);
  // run_bf16's two halves, so that products of the same x convert it once (run_same_input):
  // x's n rows of cols as bf16 in act_scratch_ (lo: their low parts under bf16x2, else null),
  // then w's GEMMs on them.
  // stack_block > 0 (bf16x2 only): each row as [hi lo] per block of that many columns (ld
  // 2 * cols), for gemm_k_stacked; else hi and lo in planes of n rows of cols (ld cols).
  struct BfRows {
    const __nv_bfloat16* hi;
    const __nv_bfloat16* lo;
    int64_t ld, stack_block;
  };
  BfRows stage_rows(const float* x, int64_t x_stride, int64_t n, int64_t cols, int64_t stack_block,
                    cudaStream_t stream);
  void gemm_bf16(const WeightMatrix& w, int64_t groups, const BfRows& x, int64_t n, float* y,
                 int64_t y_stride, cudaStream_t stream);
  // Whether w's bf16x2 GEMM runs K-stacked: weights exact in bf16 that are dequantised anyway
  // (FP8 with ue8m0 scales, FP4), columns a multiple of 16.
  bool k_stacks(const WeightMatrix& w) const;
  void gemm_k_stacked(const WeightMatrix& w, int64_t groups, const BfRows& x, int64_t n, float* y,
                      int64_t y_stride, cudaStream_t stream);
  // A large bf16 matrix (the head) times a few rows: one cuBLAS GEMM reads it once for all of
  // them, x's high and low bf16 parts stacked as 2n columns (bf16x2), their halves added after.
  // The decode GEMV would read it once per 8 rows on CUDA cores (2.1 ms for the head at 8 rows,
  // against 0.25 ms for one).
  void run_stacked(const WeightMatrix& w, const float* x, int64_t x_stride, int64_t n, float* y,
                   int64_t y_stride, cudaStream_t stream);
  // Under GemmPrecision::fp8, w (in `groups` row groups) times x as an FP8 GEMM; false where w
  // does not take one (then nothing is written and the caller runs its bf16 path).
  bool try_fp8(const WeightMatrix& w, int64_t groups, const float* x, int64_t x_stride, int64_t n,
               float* y, int64_t y_stride, cudaStream_t stream);

  GemmPrecision precision_;
  int64_t gemv_max_rows_;
  GemvMode gemv_mode_;
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer weight_scratch_, act_scratch_, stacked_out_;
  // cuBLAS's workspace, ours: products captured into a decode step's graph must not allocate.
  DeviceBuffer workspace_;
  std::unique_ptr<Fp8Gemm> fp8_;  // GemmPrecision::fp8 only
  Fp8Counts fp8_counts_;
};

// Whether LinearRunner::run takes w times n (2 <= n <= its GEMV rows) through run_stacked.
bool stacked_gemm_fits(const WeightMatrix& w, int64_t n, GemmPrecision precision);

// Dequantises a whole weight matrix into bf16 (to_bf16) or float32; used by the GEMM path and
// its test.
// twice (bf16 only): rows of 2 * cols, each row's values twice ([W W], the K-stacked GEMM's).
void dequantize(const WeightMatrix& w, void* out, bool to_bf16, cudaStream_t stream,
                bool twice = false);

}  // namespace agentrt::engine::cuda
