#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp8_act_quant.h"
#include "engine/cuda/fp8_gemm.h"
#include "engine/cuda/fp8_quant_warp.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

namespace aq = fp8_act_quant;

// One warp per (row, 128-column block): the block's largest magnitude, its power-of-two scale,
// and its 128 values as e4m3 (round to nearest even, saturating at +-448), 4 a lane. kVec4: x
// 16-byte aligned with a stride a multiple of 4.
template <bool kVec4>
__global__ void quantize_rows_kernel(const float* x, int64_t stride, int64_t rows, int64_t blocks,
                                     uint8_t* q, int64_t q_ld, float* scales, int64_t scale_rows,
                                     bool rows_contiguous) {
  const int lane = int(threadIdx.x % 32);
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; w < rows * blocks;
       w += warps) {
    const int64_t m = w / blocks, kb = w - m * blocks;
    const float* src = x + m * stride + kb * aq::kBlock + 4 * lane;
    float4 v;
    if constexpr (kVec4) {
      v = __ldg(reinterpret_cast<const float4*>(src));
    } else {
      v = make_float4(__ldg(src), __ldg(src + 1), __ldg(src + 2), __ldg(src + 3));
    }
    float scale;
    *reinterpret_cast<uint32_t*>(q + m * q_ld + kb * aq::kBlock + 4 * lane) =
        quantize_block_e4m3(v, &scale);
    if (lane == 0)
      scales[rows_contiguous ? aq::act_scale_index(m, kb, scale_rows) : m * blocks + kb] = scale;
  }
}

// w's 128 x 128 block scales as float32 rows of fp8_act_quant::weight_scale_ld(w.cols), zero
// padded: cuBLASLt's BLK128x128_32F operand for w's rows (from w.row_offset, a multiple of 128).
__global__ void weight_scales_kernel(WeightMatrix w, int64_t row_blocks, int64_t ld, float* out) {
  const int64_t cb = aq::column_blocks(w.cols), first = w.row_offset / aq::kBlock;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < row_blocks * ld;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t rb = i / ld, c = i - rb * ld;
    float s = 0.0f;
    if (c < cb) {
      const int64_t si = (first + rb) * cb + c;
      s = w.scale_type == ScaleType::f32 ? static_cast<const float*>(w.scale)[si]
                                         : e8m0(static_cast<const uint8_t*>(w.scale)[si]);
    }
    out[i] = s;
  }
}

// The largest power of two (up to 256) dividing the address, the leading dimension's bytes and
// the offset between groups' operands: what cuBLASLt may assume of an operand's alignment.
uint32_t alignment(const void* p, int64_t ld_bytes, int64_t group_bytes = 0) {
  const uint64_t bits =
      reinterpret_cast<uintptr_t>(p) | uint64_t(ld_bytes) | uint64_t(group_bytes) | 256u;
  return uint32_t(bits & (~bits + 1));
}

template <typename T>
void set_attribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const T& v) {
  check_cublas(cublasLtMatmulDescSetAttribute(d, a, &v, sizeof(v)),
               "cublasLtMatmulDescSetAttribute (FP8 block-scaled GEMM)");
}
cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t l = nullptr;
  check_cublas(cublasLtMatrixLayoutCreate(&l, type, uint64_t(rows), uint64_t(cols), ld),
               "cublasLtMatrixLayoutCreate (FP8 block-scaled GEMM)");
  return l;
}
struct Preference {
  cublasLtMatmulPreference_t p = nullptr;
  Preference() {
    check_cublas(cublasLtMatmulPreferenceCreate(&p), "cublasLtMatmulPreferenceCreate");
  }
  ~Preference() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
  template <typename T>
  void set(cublasLtMatmulPreferenceAttributes_t a, const T& v) {
    check_cublas(cublasLtMatmulPreferenceSetAttribute(p, a, &v, sizeof(v)),
                 "cublasLtMatmulPreferenceSetAttribute");
  }
};

// D = A^T B with A's 128 x 128 block scales and B's per-column 128-row block scales (column-major
// terms: A is the weights, k x m; B the activations, k x n). The scale pointers are set per GEMM.
cublasLtMatmulDesc_t describe() {
  cublasLtMatmulDesc_t d = nullptr;
  check_cublas(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F),
               "cublasLtMatmulDescCreate (FP8 block-scaled GEMM)");
  set_attribute(d, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(CUBLAS_OP_T));
  set_attribute(d, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(CUBLAS_OP_N));
  set_attribute(d, CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F));
  set_attribute(d, CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                int32_t(CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F));
  return d;
}

void set_scales(cublasLtMatmulDesc_t d, const float* a_scales, const float* b_scales) {
  set_attribute(d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, static_cast<const void*>(a_scales));
  set_attribute(d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, static_cast<const void*>(b_scales));
}

constexpr int64_t kWorkspaceBytes = int64_t(32) << 20;

}  // namespace

void quantize_rows_e4m3(const float* x, int64_t stride, int64_t rows, int64_t cols, uint8_t* q,
                        float* scales, int64_t scale_rows, cudaStream_t stream,
                        bool rows_contiguous) {
  if (cols % aq::kBlock != 0)
    throw std::invalid_argument("quantize_rows_e4m3: " + std::to_string(cols) +
                                " columns is not a multiple of 128");
  if (rows <= 0) return;
  const int64_t blocks = cols / aq::kBlock, warps = rows * blocks;
  const unsigned grid = unsigned(std::min<int64_t>((warps + 7) / 8, 65536));
  if (stride % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0)
    quantize_rows_kernel<true><<<grid, 256, 0, stream>>>(x, stride, rows, blocks, q, cols, scales,
                                                         scale_rows, rows_contiguous);
  else
    quantize_rows_kernel<false><<<grid, 256, 0, stream>>>(x, stride, rows, blocks, q, cols, scales,
                                                          scale_rows, rows_contiguous);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

Fp8Gemm::Fp8Gemm(Fp8ScaleLayout layout) : layout_(layout), workspace_(kWorkspaceBytes) {
  check_cublas(cublasLtCreate(&handle_), "cublasLtCreate");
  desc_ = describe();
}

Fp8Gemm::~Fp8Gemm() {
  for (auto& [key, plan] : plans_) plan.release();
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  if (handle_) cublasLtDestroy(handle_);
}

void Fp8Gemm::Plan::release() {
  for (cublasLtMatrixLayout_t l : {a, b, d})
    if (l) cublasLtMatrixLayoutDestroy(l);
  a = b = d = nullptr;
}

bool Fp8Gemm::fits(const WeightMatrix& w, int64_t groups) {
  if (w.type != WeightType::f8_e4m3 || !w.scale || groups < 1 || w.rows % groups != 0) return false;
  const int64_t rows = w.rows / groups;
  return rows % aq::kBlock == 0 && w.cols % aq::kBlock == 0 && w.row_offset % aq::kBlock == 0;
}

aq::RowsOut Fp8Gemm::room(int64_t n, int64_t cols, cudaStream_t stream) {
  if (cols % aq::kBlock != 0)
    throw std::invalid_argument("Fp8Gemm::room: " + std::to_string(cols) +
                                " columns is not a multiple of 128");
  const int64_t blocks = cols / aq::kBlock, whole = aq::whole_rows(n), tail = n - whole;
  act_.reserve(std::max<int64_t>(whole, 1) * cols);
  act_scales_.reserve(std::max<int64_t>(whole, 1) * blocks * 4);
  aq::RowsOut r;
  r.q = act_.as<uint8_t>();
  r.scales = act_scales_.as<float>();
  r.whole = whole;
  r.cols = cols;
  if (tail > 0) {
    // The last rows padded to a GEMM of kTailRows with zeros (zero scales: the padding adds
    // nothing).
    constexpr int64_t kTail = aq::kTailRows;
    tail_.reserve(kTail * cols);
    tail_scales_.reserve(kTail * blocks * 4);
    AGENTRT_CUDA_CHECK(cudaMemsetAsync(tail_.get(), 0, size_t(kTail * cols), stream));
    AGENTRT_CUDA_CHECK(cudaMemsetAsync(tail_scales_.get(), 0, size_t(kTail * blocks * 4), stream));
    r.tail_q = tail_.as<uint8_t>();
    r.tail_scales = tail_scales_.as<float>();
  }
  return r;
}

Fp8Gemm::Staged Fp8Gemm::staged(const aq::RowsOut& rows, int64_t n) {
  Staged s;
  s.n = n;
  s.cols = rows.cols;
  s.q = rows.q;
  s.scales = rows.scales;
  if (n > rows.whole) {
    s.tail_q = rows.tail_q;
    s.tail_scales = rows.tail_scales;
  }
  return s;
}

Fp8Gemm::Staged Fp8Gemm::stage(const float* x, int64_t x_stride, int64_t n, int64_t cols,
                               cudaStream_t stream) {
  const aq::RowsOut r = room(n, cols, stream);
  quantize_rows_e4m3(x, x_stride, r.whole, cols, r.q, r.scales, r.whole, stream,
                     layout_.act_rows_contiguous);
  if (n > r.whole)
    quantize_rows_e4m3(x + r.whole * x_stride, x_stride, n - r.whole, cols, r.tail_q, r.tail_scales,
                       aq::kTailRows, stream, layout_.act_rows_contiguous);
  return staged(r, n);
}

bool Fp8Gemm::ok(const Shape& s) {
  const auto key = s.key();
  if (plans_.count(key)) return true;
  if (refused_.count(key)) return false;
  // The heuristic sees the scale modes; the pointers it is given only need to be set.
  const float* any = workspace_.as<float>();
  set_scales(desc_, any, any);
  Plan plan;
  plan.a = make_layout(CUDA_R_8F_E4M3, s.k, s.m, s.k);
  plan.b = make_layout(CUDA_R_8F_E4M3, s.k, s.n, s.ldb);
  plan.d = make_layout(s.d_bf16 ? CUDA_R_16BF : CUDA_R_32F, s.m, s.n, s.ldd);
  Preference pref;
  pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(workspace_.bytes()));
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, s.a_align);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, s.b_align);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, s.d_align);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, s.d_align);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, desc_, plan.a, plan.b, plan.d, plan.d, pref.p, 1, &result, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
    plan.release();
    refused_.insert(key);
    return false;
  }
  plan.algo = result.algo;
  plans_.emplace(key, plan);
  return true;
}

void Fp8Gemm::gemm(const Shape& s, const void* a, const float* a_scales, const void* b,
                   const float* b_scales, void* d, cudaStream_t stream) {
  const Plan& plan = plans_.at(s.key());
  // cublasLtMatmul reads the descriptor when called, so the next GEMM may change its pointers.
  set_scales(desc_, a_scales, b_scales);
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t status =
      cublasLtMatmul(handle_, desc_, &one, a, plan.a, b, plan.b, &zero, d, plan.d, d, plan.d,
                     &plan.algo, workspace_.get(), size_t(workspace_.bytes()), stream);
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("cuBLASLt FP8 block-scaled GEMM of " + std::to_string(s.m) + " x " +
                             std::to_string(s.k) + " weights by " + std::to_string(s.n) +
                             " rows failed with status " + std::to_string(int(status)));
}

std::pair<Fp8Gemm::Shape, Fp8Gemm::Shape> Fp8Gemm::shapes(const WeightMatrix& w, int64_t groups,
                                                          const Staged& x, const void* y,
                                                          int64_t y_stride, bool y_bf16) {
  const int64_t rg = w.rows / groups, elt = y_bf16 ? 2 : 4;
  constexpr int64_t kTail = aq::kTailRows;
  const auto* wd = static_cast<const uint8_t*>(w.data);
  if (x.n > aq::whole_rows(x.n)) tail_out_.reserve(kTail * w.rows * elt);
  const uint32_t a_align = alignment(wd, w.cols, rg * w.cols);
  const int64_t b_step = groups > 1 ? w.cols : 0;  // bytes between groups' columns of x
  const Shape main{rg,
                   aq::whole_rows(x.n),
                   w.cols,
                   x.cols,
                   y_stride,
                   a_align,
                   alignment(x.q, x.cols, b_step),
                   alignment(y, y_stride * elt, rg * elt),
                   y_bf16};
  const Shape last{rg,
                   kTail,
                   w.cols,
                   x.cols,
                   w.rows,
                   a_align,
                   alignment(x.tail_q, x.cols, b_step),
                   alignment(tail_out_.get(), w.rows * elt, rg * elt),
                   y_bf16};
  return {main, last};
}

bool Fp8Gemm::accepts(const WeightMatrix& w, int64_t groups, const Staged& x, const void* y,
                      int64_t y_stride, bool y_bf16) {
  // Scales by rows (the layout probe's alternative) leave a group's blocks strided.
  if (!fits(w, groups) || (!layout_.act_rows_contiguous && groups > 1)) return false;
  if (x.cols != groups * w.cols)
    throw std::logic_error("Fp8Gemm::multiply: staged rows of " + std::to_string(x.cols) +
                           " columns for " + std::to_string(groups) + " groups of " +
                           std::to_string(w.cols));
  const int64_t whole = aq::whole_rows(x.n), tail = x.n - whole;
  const auto [main, last] = shapes(w, groups, x, y, y_stride, y_bf16);
  return (whole == 0 || ok(main)) && (tail == 0 || ok(last));
}

bool Fp8Gemm::multiply(const WeightMatrix& w, int64_t groups, const Staged& x, void* y,
                       int64_t y_stride, cudaStream_t stream, bool y_bf16) {
  // Every GEMM's algorithm before the first launch: all of y or none of it.
  if (!accepts(w, groups, x, y, y_stride, y_bf16)) return false;
  const int64_t rg = w.rows / groups, whole = aq::whole_rows(x.n), tail = x.n - whole;
  if (whole + tail <= 0) return true;
  const auto* wd = static_cast<const uint8_t*>(w.data);
  constexpr int64_t kTail = aq::kTailRows;
  const int64_t elt = y_bf16 ? 2 : 4;
  const auto [main, last] = shapes(w, groups, x, y, y_stride, y_bf16);
  auto* tail_out = static_cast<char*>(tail_out_.get());
  auto* out = static_cast<char*>(y);
  const int64_t ld = weight_scale_ld(w.cols), row_blocks = w.rows / aq::kBlock;
  weight_scales_.reserve(row_blocks * ld * 4);
  auto* ws = weight_scales_.as<float>();
  weight_scales_kernel<<<grid_for(row_blocks * ld), 256, 0, stream>>>(w, row_blocks, ld, ws);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* a = wd + g * rg * w.cols;
    const float* as = ws + (g * rg / aq::kBlock) * ld;
    const int64_t col_block = g * w.cols / aq::kBlock;
    if (whole > 0)
      gemm(main, a, as, x.q + g * w.cols, x.scales + col_block * whole, out + g * rg * elt, stream);
    if (tail > 0)
      gemm(last, a, as, x.tail_q + g * w.cols, x.tail_scales + col_block * kTail,
           tail_out + g * rg * elt, stream);
  }
  if (tail > 0)
    AGENTRT_CUDA_CHECK(cudaMemcpy2DAsync(out + whole * y_stride * elt, size_t(y_stride * elt),
                                         tail_out, size_t(w.rows * elt), size_t(w.rows * elt),
                                         size_t(tail), cudaMemcpyDeviceToDevice, stream));
  return true;
}

std::vector<std::string> Fp8Gemm::refused_shapes() const {
  std::vector<std::string> out;
  for (const auto& [m, n, k, ldb, ldd, a_align, b_align, d_align, d_bf16] : refused_)
    out.push_back(std::to_string(m) + " x " + std::to_string(k) + " weights by " +
                  std::to_string(n) + " rows (ldb " + std::to_string(ldb) + ", ldd " +
                  std::to_string(ldd) + ", alignment a/b/d " + std::to_string(a_align) + "/" +
                  std::to_string(b_align) + "/" + std::to_string(d_align) + " bytes" +
                  (d_bf16 ? ", bf16 out" : "") + ")");
  return out;
}

int64_t Fp8Gemm::weight_scale_ld(int64_t cols) const {
  return layout_.weight_rows_padded ? aq::weight_scale_ld(cols) : aq::column_blocks(cols);
}

Fp8Gemm::Shape Fp8Gemm::prepared_shape(const Prepared& p) {
  return {p.m,
          p.n,
          p.k,
          p.k,
          p.ldd,
          alignment(p.a, p.k),
          alignment(p.b, p.k),
          alignment(p.d, p.ldd * 4)};
}

bool Fp8Gemm::prepared_ok(const Prepared& p) {
  if (!takes_prepared() || p.m % aq::kBlock != 0 || p.k % aq::kBlock != 0 || p.n % 4 != 0 ||
      p.n <= 0)
    return false;
  return ok(prepared_shape(p));
}

void Fp8Gemm::prepared_gemm(const Prepared& p, cudaStream_t stream) {
  const Shape s = prepared_shape(p);
  if (!plans_.count(s.key()))
    throw std::logic_error("Fp8Gemm::prepared_gemm: shape " + std::to_string(p.m) + " x " +
                           std::to_string(p.k) + " by " + std::to_string(p.n) +
                           " rows not accepted by prepared_ok");
  gemm(s, p.a, p.a_scales, p.b, p.b_scales, p.d, stream);
}

}  // namespace agentrt::engine::cuda
