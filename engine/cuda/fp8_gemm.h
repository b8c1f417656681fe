// GemmPrecision::fp8: prefill-sized products of FP8 weights as cuBLASLt block-scaled FP8 GEMMs
// (Hopper, cuBLAS 12.9 or later). The weights stay as stored (e4m3, 128 x 128 block scales) and
// the activations are quantised to e4m3 per row and 128 columns (fp8_act_quant.h), as DeepSeek's
// inference does: twice the bf16 tensor cores' rate, no dequantised weight copy, and about 1e-2
// relative error on the products (e4m3 keeps 4 significant bits), against ~1e-5 for bf16x2.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/fp8_act_quant.h"
#include "engine/matmul.h"

namespace agentrt::engine::cuda {

// x's `rows` rows (stride floats apart) of `cols` (a multiple of 128) as e4m3 at q ([rows][cols])
// and their block scales at scales[fp8_act_quant::act_scale_index(m, kb, scale_rows)] (or, with
// rows_contiguous false, scales[m * cols / 128 + kb]). For tests and Fp8Gemm.
void quantize_rows_e4m3(const float* x, int64_t stride, int64_t rows, int64_t cols, uint8_t* q,
                        float* scales, int64_t scale_rows, cudaStream_t stream,
                        bool rows_contiguous = true);

// The scale layouts Fp8Gemm hands cuBLASLt. The defaults are the documented ones (and what
// torch._scaled_mm passes; fp8_act_quant.h); the others exist so that one GPU run
// (CudaFp8Gemm.ScaleLayoutProbe) confirms which layout cuBLASLt reads. Rows not contiguous: one
// GEMM per call only (no groups).
struct Fp8ScaleLayout {
  bool act_rows_contiguous = true;  // activation scales [block][row]; false: [row][block]
  bool weight_rows_padded = true;   // weight scale rows of column blocks padded to 4
};

class Fp8Gemm {
 public:
  explicit Fp8Gemm(Fp8ScaleLayout layout = {});
  ~Fp8Gemm();
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;

  // Whether w, as `groups` equal groups of rows (block-diagonal, LinearRunner::run_grouped), has
  // the shapes these GEMMs take: FP8 e4m3, columns a multiple of 128, each group's rows a
  // multiple of 128 starting on a scale block.
  static bool fits(const WeightMatrix& w, int64_t groups = 1);

  // x's n rows quantised once for several products (LinearRunner::run_same_input): valid until
  // the next stage() or run().
  struct Staged {
    const uint8_t* q = nullptr;     // [n][cols]
    const float* scales = nullptr;  // the first whole_rows(n) rows' scales
    // the last n % kTailRows rows, zero-padded to kTailRows (fp8_act_quant.h)
    const uint8_t* tail_q = nullptr;
    const float* tail_scales = nullptr;
    int64_t n = 0, cols = 0;
  };
  Staged stage(const float* x, int64_t x_stride, int64_t n, int64_t cols, cudaStream_t stream);
  // Room for n rows of `cols` (a multiple of 128) that the caller's kernel quantises, in
  // stage()'s layout with the tail's padding zeroed; staged(room, n) is then what multiply takes.
  // Valid until the next stage(), room() or run().
  fp8_act_quant::RowsOut room(int64_t n, int64_t cols, cudaStream_t stream);
  static Staged staged(const fp8_act_quant::RowsOut& rows, int64_t n);

  // Whether multiply(w, groups, x, y, y_stride) runs as FP8 GEMMs: w fits and cuBLASLt has an
  // algorithm for each of its shapes.
  bool accepts(const WeightMatrix& w, int64_t groups, const Staged& x, const void* y,
               int64_t y_stride, bool y_bf16 = false);

  // y (n rows, y_stride floats apart) = x W^T for staged x; group g of w's rows reads columns
  // [g, g + 1) * w.cols of x. False, with nothing written to y, where cuBLASLt has no algorithm
  // for these shapes (the caller then runs its bf16 path).
  bool multiply(const WeightMatrix& w, int64_t groups, const Staged& x, float* y, int64_t y_stride,
                cudaStream_t stream) {
    return multiply(w, groups, x, static_cast<void*>(y), y_stride, stream, false);
  }
  // y_bf16: y is bf16 rows (y_stride elements apart) that the GEMMs write directly (half the
  // bytes of float32 for a consumer that rounds to bf16 anyway: the prefill attention's query).
  bool multiply(const WeightMatrix& w, int64_t groups, const Staged& x, void* y, int64_t y_stride,
                cudaStream_t stream, bool y_bf16);

  bool run(const WeightMatrix& w, int64_t groups, const float* x, int64_t x_stride, int64_t n,
           float* y, int64_t y_stride, cudaStream_t stream) {
    if (!fits(w, groups)) return false;
    return multiply(w, groups, stage(x, x_stride, n, groups * w.cols, stream), y, y_stride, stream);
  }

  // One GEMM of operands already in cuBLASLt's forms (the routed experts, moe_fp8.cu):
  // d (n rows, ldd floats apart) = b a^T for a: m rows of k e4m3 (m and k multiples of 128) with
  // BLK128x128 scales in rows of weight_scale_ld(k) floats, and b: n rows of k e4m3 (n a
  // multiple of 4) with VEC128 scales [k / 128][n]. Ask prepared_ok for every shape of a pass
  // before its first launch (all of it on FP8 or none).
  struct Prepared {
    int64_t m = 0, n = 0, k = 0, ldd = 0;
    const uint8_t* a = nullptr;
    const float* a_scales = nullptr;
    const uint8_t* b = nullptr;
    const float* b_scales = nullptr;
    float* d = nullptr;
  };
  bool prepared_ok(const Prepared& p);
  void prepared_gemm(const Prepared& p, cudaStream_t stream);
  // Floats per row of a matrix's block scales, as this layout hands them to cuBLASLt.
  int64_t weight_scale_ld(int64_t cols) const;
  // The shapes cuBLASLt's heuristic refused so far, one line each (the benchmark prints them).
  std::vector<std::string> refused_shapes() const;
  // Prepared activations need their scales [block][row] (the default layout).
  bool takes_prepared() const { return layout_.act_rows_contiguous; }

 private:
  // One GEMM: D (m x n, ld ldd, float32) = A^T B, A the weights (k x m, e4m3, ld k), B the
  // activations (k x n, e4m3, ld ldb), scales as fp8_act_quant.h lays them out. ok() first
  // asks cuBLASLt for an algorithm (cached per shape).
  struct Shape {
    int64_t m, n, k, ldb, ldd;
    uint32_t a_align, b_align, d_align;  // bytes the operands' addresses and strides are aligned to
    bool d_bf16 = false;                 // D as bf16 (multiply's y_bf16), else float32
    auto key() const {
      return std::make_tuple(m, n, k, ldb, ldd, a_align, b_align, d_align, d_bf16);
    }
  };
  using Key =
      std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t, bool>;
  bool ok(const Shape& s);
  // multiply's two GEMM shapes: the whole rows' and the tail's (tail_out_ reserved for it).
  std::pair<Shape, Shape> shapes(const WeightMatrix& w, int64_t groups, const Staged& x,
                                 const void* y, int64_t y_stride, bool y_bf16);
  static Shape prepared_shape(const Prepared& p);
  void gemm(const Shape& s, const void* a, const float* a_scales, const void* b,
            const float* b_scales, void* d, cudaStream_t stream);

  Fp8ScaleLayout layout_;
  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_, act_, act_scales_, tail_, tail_scales_, tail_out_, weight_scales_;
  // Per shape: cuBLASLt's algorithm and the operands' layouts, made once (a prefill's routed
  // experts take hundreds of GEMMs a layer; making descriptors for each cost host time the GPU
  // would wait for). Owned: release() in the destructor.
  struct Plan {
    cublasLtMatmulAlgo_t algo{};
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    void release();
  };
  std::map<Key, Plan> plans_;
  std::set<Key> refused_;                // shapes cuBLASLt has no algorithm for
  cublasLtMatmulDesc_t desc_ = nullptr;  // operations and scale modes; scale pointers per GEMM
};

}  // namespace agentrt::engine::cuda
