#include <cuda_bf16.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cuda/cublas_check.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp4_gemm.h"
#include "engine/cuda/grouped_fp8_gemm.h"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/moe_gemm.h"
#include "engine/cuda/segment_search.cuh"
#include "engine/cuda/swiglu.h"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

bool exact_in_bf16(WeightType t, ScaleType s) {
  return t == WeightType::bf16 || t == WeightType::f4_e2m1 ||
         (t == WeightType::f8_e4m3 && s == ScaleType::e8m0);
}

// The matrix block (blockIdx.y, blockIdx.z) of decode_*_kernel reads, and where its bf16 copy
// goes: the chunk's expert j = blockIdx.y, z = 0 and 1 writing gate (w1) and up (w3) as one
// [2 * inter][hidden] matrix, 2 writing down (w2) [hidden][inter].
struct DecodeTarget {
  WeightMatrix w;
  __nv_bfloat16* out;
};
__device__ __forceinline__ DecodeTarget decode_target(const ExpertsDevice& e, const int32_t* active,
                                                      int64_t a0, int64_t inter, int64_t hidden,
                                                      __nv_bfloat16* w13, __nv_bfloat16* w2) {
  const int64_t j = blockIdx.y;
  const int32_t ex = active[a0 + j];
  const int which = int(blockIdx.z);
  const int64_t per = inter * hidden;
  return {which == 0   ? e.w1[ex]
          : which == 1 ? e.w3[ex]
                       : e.w2[ex],
          which == 2 ? w2 + j * per : w13 + (2 * j + which) * per};
}

// Experts active[a0 + blockIdx.y] of the chunk to bf16, one stored 16-byte chunk per thread and
// step (T: bf16, or FP8 with power-of-two scales, exact in bf16).
template <WeightType T>
__global__ void decode_experts_kernel(ExpertsDevice e, const int32_t* active, int64_t a0,
                                      int64_t inter, int64_t hidden, __nv_bfloat16* w13,
                                      __nv_bfloat16* w2) {
  static_assert(T == WeightType::bf16 || T == WeightType::f8_e4m3);
  constexpr int V = chunk_values<T>();
  const auto [w, out] = decode_target(e, active, a0, inter, hidden, w13, w2);
  const int64_t per_row = w.cols / V;
  // Rows by blocks, chunks by threads: no division per chunk.
  for (int64_t row = blockIdx.x; row < w.rows; row += gridDim.x)
    for (int64_t c = threadIdx.x; c < per_row; c += blockDim.x) {
      const RowView rv = row_view(w, row, w.cols * value_bytes_x2(T) / 2);
      const uint4 raw = rv.chunks[c];
      uint4* dst = reinterpret_cast<uint4*>(out + row * w.cols + c * V);
      if constexpr (T == WeightType::bf16) {
        *dst = raw;
      } else {
        // The placed values times 2^120 are the stored values; the ue8m0 block scale is a power
        // of two, so every product is exact in bf16.
        const float scale = e8m0(static_cast<const uint8_t*>(rv.scales)[(c * V) / 128]);
        const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
        __align__(16) __nv_bfloat16 v[V];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          float f[word_values<T>()];
          decode_word<T>(words[q], f);
#pragma unroll
          for (int r = 0; r < word_values<T>(); ++r)
            v[q * word_values<T>() + r] = __float2bfloat16(f[r] * 0x1p120f * scale);
        }
#pragma unroll
        for (int q = 0; q < V / 8; ++q) dst[q] = reinterpret_cast<const uint4*>(v)[q];
      }
    }
}

// FP4 experts, one thread per stored 32-bit word (8 values, one 16-byte store): a warp reads
// 128 contiguous bytes and writes 512 (a thread per 16-byte chunk wrote 64 bytes at a 64-byte
// stride, partial sectors in every store instruction).
__global__ void decode_fp4_experts_kernel(ExpertsDevice e, const int32_t* active, int64_t a0,
                                          int64_t inter, int64_t hidden, __nv_bfloat16* w13,
                                          __nv_bfloat16* w2) {
  const auto [w, out] = decode_target(e, active, a0, inter, hidden, w13, w2);
  const int64_t per_row = w.cols / 8;
  // Rows by blocks, words by threads: no division per word.
  for (int64_t row = blockIdx.x; row < w.rows; row += gridDim.x)
    for (int64_t c = threadIdx.x; c < per_row; c += blockDim.x) {
      const RowView rv = row_view(w, row, w.cols / 2);
      const uint32_t word = __ldg(reinterpret_cast<const uint32_t*>(rv.chunks) + c);
      const float scale = e8m0(__ldg(static_cast<const uint8_t*>(rv.scales) + c / 4));
      float f[8];
      decode_word<WeightType::f4_e2m1>(word, f);
      // Unplace first (f * 2^126 is the stored value): 2^126 times a large scale would overflow.
      __align__(16) __nv_bfloat162 v[4];
#pragma unroll
      for (int r = 0; r < 4; ++r)
        v[r] = __floats2bfloat162_rn(f[2 * r] * 0x1p126f * scale, f[2 * r + 1] * 0x1p126f * scale);
      *reinterpret_cast<uint4*>(out + row * w.cols + c * 8) = *reinterpret_cast<const uint4*>(v);
    }
}

// Where each grouped pair of the chunk (local row r = pair s0 + r) sits in the padded, stacked
// buffers: the chunk's j-th expert owns rows j * copies * slot .. (j + 1) * copies * slot - 1,
// its pairs' bf16 high parts first, then (copies = 2) their low parts `slot` rows later, so one
// strided batched GEMM covers every expert of the chunk and both parts.
struct RowPlace {
  int32_t hi;   // row of the high part
  int32_t low;  // rows from it to the low part
};

__global__ void place_rows_kernel(const int32_t* seg_start, int64_t a0, int64_t a1, int64_t rows,
                                  int copies, int32_t slot, RowPlace* place) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const int32_t s0 = seg_start[a0], pair = s0 + int32_t(r);
  const int64_t lo = segment_of(seg_start, a0, a1, pair);
  place[r] = {int32_t(lo - a0) * copies * slot + (pair - seg_start[lo]), slot};
}

// x rows of the chunk's pairs: h[order[s0 + r] / k] as bf16 (+ the low parts), one block a row,
// 4 columns a thread (hidden is a multiple of 32, every row 16-byte aligned).
__global__ void gather_rows_kernel(const float* h, const int32_t* order, int64_t s0, int64_t k,
                                   int64_t hidden, const RowPlace* place, bool split,
                                   __nv_bfloat16* x) {
  const int64_t r = blockIdx.x;
  const RowPlace p = place[r];
  const float4* src = reinterpret_cast<const float4*>(h + int64_t(order[s0 + r] / k) * hidden);
  __nv_bfloat16* hi = x + int64_t(p.hi) * hidden;
  for (int64_t c = threadIdx.x; c < hidden / 4; c += blockDim.x)
    store_bf16_parts(split, reinterpret_cast<uint16_t*>(hi), int64_t(p.low) * hidden, 4 * c,
                     src[c]);
}

// act = weight of the pair * silu(clamp(gate)) * clamp(up) from the stacked gate/up products
// (high + low parts summed), stacked the same way (swiglu.h).
__global__ void swiglu_pairs_kernel(const float* gate_up, const int32_t* order,
                                    const float* weights, int64_t s0, int64_t inter, float limit,
                                    const RowPlace* place, bool split, __nv_bfloat16* act) {
  const int64_t r = blockIdx.x;
  const RowPlace p = place[r];
  const float* gu = gate_up + int64_t(p.hi) * 2 * inter;
  const float* gu_lo = split ? gu + int64_t(p.low) * 2 * inter : nullptr;
  const float weight = weights[order[s0 + r]];
  __nv_bfloat16* out = act + int64_t(p.hi) * inter;
  auto silu_times = [&](float g, float u) { return swiglu_weighted(g, u, limit, weight); };
  // 4 columns a thread (inter is a multiple of 32, every row 16-byte aligned).
  for (int64_t c = threadIdx.x; c < inter / 4; c += blockDim.x) {
    float4 g = reinterpret_cast<const float4*>(gu)[c],
           u = reinterpret_cast<const float4*>(gu + inter)[c];
    if (split) {
      const float4 gl = reinterpret_cast<const float4*>(gu_lo)[c],
                   ul = reinterpret_cast<const float4*>(gu_lo + inter)[c];
      g.x += gl.x, g.y += gl.y, g.z += gl.z, g.w += gl.w;
      u.x += ul.x, u.y += ul.y, u.z += ul.z, u.w += ul.w;
    }
    const float4 v = make_float4(silu_times(g.x, u.x), silu_times(g.y, u.y), silu_times(g.z, u.z),
                                 silu_times(g.w, u.w));
    store_bf16_parts(split, reinterpret_cast<uint16_t*>(out), int64_t(p.low) * inter, 4 * c, v);
  }
}

// pair_out[s0 + r] = the down product of pair s0 + r (high + low parts when split).
__global__ void scatter_rows_kernel(const float* y, int64_t s0, int64_t hidden,
                                    const RowPlace* place, bool split, float* pair_out) {
  const int64_t r = blockIdx.x;
  const RowPlace p = place[r];
  const float4* hi = reinterpret_cast<const float4*>(y + int64_t(p.hi) * hidden);
  const float4* lo = hi + int64_t(p.low) * hidden / 4;
  float4* out = reinterpret_cast<float4*>(pair_out + (s0 + r) * hidden);
  for (int64_t c = threadIdx.x; c < hidden / 4; c += blockDim.x) {
    float4 v = hi[c];
    if (split) {
      const float4 l = lo[c];
      v.x += l.x, v.y += l.y, v.z += l.z, v.w += l.w;
    }
    out[c] = v;
  }
}

}  // namespace

ExpertGemm::ExpertGemm(GemmPrecision precision, int64_t min_rows, int64_t chunk_bytes,
                       bool fp4_kernel, int fp8_streams, bool priority_stream,
                       int64_t fp8_grouped_rows, bool fp8_row_scales)
    : precision_(precision),
      fp8_row_scales_(fp8_row_scales),
      min_rows_(min_rows),
      chunk_bytes_(chunk_bytes),
      fp4_kernel_(fp4_kernel) {
  int least = 0, greatest = 0;
  AGENTRT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  if (priority_stream) {
    AGENTRT_CUDA_CHECK(
        cudaStreamCreateWithPriority(&work_stream_, cudaStreamNonBlocking, greatest));
    for (cudaEvent_t* e : {&enter_, &leave_})
      AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  }
  if (precision == GemmPrecision::fp8) {
    int device = 0;
    AGENTRT_CUDA_CHECK(cudaGetDevice(&device));
    AGENTRT_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device));
    fp8_grouped_rows_ = grouped_expert_product_runs(device) ? fp8_grouped_rows : 0;
    fp8_streams_ = std::clamp(fp8_streams, 1, 2);
    for (int i = 0; i < fp8_streams_; ++i) fp8_[i] = std::make_unique<Fp8Gemm>();
    if (fp8_streams_ == 2) {
      // The side stream shares the pass's priority.
      AGENTRT_CUDA_CHECK(cudaStreamCreateWithPriority(&fp8_side_, cudaStreamNonBlocking,
                                                      priority_stream ? greatest : least));
      AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&fp8_fork_, cudaEventDisableTiming));
      AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&fp8_join_, cudaEventDisableTiming));
    }
  }
  check_cublas(cublasCreate(&handle_), "cublasCreate");
  AGENTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&decode_stream_, cudaStreamNonBlocking));
  AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&start_, cudaEventDisableTiming));
  for (int b = 0; b < 2; ++b) {
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&decoded_[b], cudaEventDisableTiming));
    AGENTRT_CUDA_CHECK(cudaEventCreateWithFlags(&consumed_[b], cudaEventDisableTiming));
  }
}

ExpertGemm::~ExpertGemm() {
  if (handle_) cublasDestroy(handle_);
  if (host_) cudaFreeHost(host_);
  if (host_tiles_) cudaFreeHost(host_tiles_);
  for (int b = 0; b < 2; ++b) {
    if (decoded_[b]) cudaEventDestroy(decoded_[b]);
    if (consumed_[b]) cudaEventDestroy(consumed_[b]);
  }
  if (start_) cudaEventDestroy(start_);
  for (cudaEvent_t e : {fp8_fork_, fp8_join_, enter_, leave_})
    if (e) cudaEventDestroy(e);
  if (fp8_side_) cudaStreamDestroy(fp8_side_);
  if (work_stream_) cudaStreamDestroy(work_stream_);
  if (decode_stream_) cudaStreamDestroy(decode_stream_);
}

bool ExpertGemm::applies(const ExpertsDevice& e, int64_t n, int64_t inter, int64_t hidden,
                         cudaStream_t stream) const {
  if (precision_ == GemmPrecision::f32 || n < min_rows_) return false;
  // Whole 16-byte chunks per row; one stored type for all three matrices (as checkpoints have).
  if (inter % 32 != 0 || hidden % 32 != 0 || e.w1_type != e.w2_type) return false;
  // FP8 scales must be powers of two for the decoded weights to be exact in bf16.
  if (!exact_in_bf16(e.w1_type, ScaleType::e8m0) ||
      (e.w1_type == WeightType::f8_e4m3 && e.scale_type != ScaleType::e8m0))
    return false;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  AGENTRT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  return capturing == cudaStreamCaptureStatusNone;
}

bool ExpertGemm::run(const ExpertsDevice& e, const ExpertSegments& s, const float* h,
                     const float* weights, int64_t k, int64_t inter, int64_t hidden, float limit,
                     float* pair_out, cudaStream_t stream) {
  const int64_t E = s.experts;
  // n_active, the segment starts and (run_fp8) the padded row starts.
  if (host_ints_ < 4 * E + 5) {
    // The last pass's uploads from it (run_fp8's padded starts) must be done.
    AGENTRT_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (host_) cudaFreeHost(host_);
    host_ = nullptr;
    AGENTRT_CUDA_CHECK(cudaMallocHost(&host_, size_t(4 * E + 5) * 4));
    host_ints_ = 4 * E + 5;
  }
  int32_t* n_active = host_;
  int32_t* seg = host_ + 1;
  AGENTRT_CUDA_CHECK(cudaMemcpyAsync(n_active, s.n_active, 4, cudaMemcpyDeviceToHost, stream));
  AGENTRT_CUDA_CHECK(
      cudaMemcpyAsync(seg, s.seg_start, size_t(E + 1) * 4, cudaMemcpyDeviceToHost, stream));
  AGENTRT_CUDA_CHECK(cudaStreamSynchronize(stream));
  mark("moe.experts.segments");
  const int64_t used = *n_active;
  if (used <= 0) return false;  // no pairs, no rows written: either answer is harmless

  const int64_t rows = (seg[used] - seg[0]) / std::max<int64_t>(k, 1);
  if (precision_ == GemmPrecision::fp8 && rows <= fp8_grouped_rows_ && fp8_fits(e, inter, hidden)) {
    run_fp8_grouped(e, s, seg, used, h, weights, k, inter, hidden, limit, pair_out, stream);
    return pair_out_bf16_;
  }
  if (precision_ == GemmPrecision::fp8 && fp8_fits(e, inter, hidden) &&
      run_fp8(e, s, seg, used, h, weights, k, inter, hidden, limit, pair_out, stream))
    return false;
  if (fp4_kernel_ && fp4_gemm_fits(e, inter, hidden)) {
    run_fp4(e, s, seg, used, h, weights, k, inter, hidden, limit, pair_out, stream);
    return false;
  }
  // The bf16 path, on a stream of the highest priority where asked for (enter()).
  const cudaStream_t work = enter(stream);
  run_bf16(e, s, seg, used, h, weights, k, inter, hidden, limit, pair_out, work);
  leave(work, stream);
  return false;
}

void ExpertGemm::run_bf16(const ExpertsDevice& e, const ExpertSegments& s, const int32_t* seg,
                          int64_t used, const float* h, const float* weights, int64_t k,
                          int64_t inter, int64_t hidden, float limit, float* pair_out,
                          cudaStream_t stream) {
  const bool split = precision_ == GemmPrecision::bf16x2;
  const int copies = split ? 2 : 1;
  const int64_t per = inter * hidden;  // values per matrix
  const int64_t chunk = std::clamp<int64_t>(chunk_bytes_ / 2 / (3 * per * 2), 1, used);
  for (int b = 0; b < 2; ++b) {
    w13_[b].reserve(chunk * 2 * per * 2);
    w2_[b].reserve(chunk * per * 2);
  }
  // The decode stream starts after everything enqueued so far (the grouping, earlier runs'
  // products on these buffers).
  AGENTRT_CUDA_CHECK(cudaEventRecord(start_, stream));
  AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(decode_stream_, start_, 0));
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  // For each of `count` experts j: y_j (rows x n column-major) = w_j^T x_j, w_j: [rows][cols]
  // bf16 `w_stride` values apart, x_j: n rows of cols bf16, y_j: n rows of `rows` floats.
  auto gemm = [&](const __nv_bfloat16* w, int64_t rows, int64_t cols, int64_t w_stride,
                  const __nv_bfloat16* x, int64_t n, float* y, int64_t count) {
    check_cublas(
        cublasGemmStridedBatchedEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), int(n), int(cols),
                                   &one, w, CUDA_R_16BF, int(cols), w_stride, x, CUDA_R_16BF,
                                   int(cols), n * cols, &zero, y, CUDA_R_32F, int(rows), n * rows,
                                   int(count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx (routed experts)");
  };
  auto decode = [&](int64_t a0, int64_t count, __nv_bfloat16* w13, __nv_bfloat16* w2) {
    cudaStream_t ds = decode_stream_;
    // Values per thread and step: a 32-bit FP4 word or a 16-byte FP8 / bf16 chunk.
    // Blocks over the rows of the taller matrix (w1/w3: inter rows, w2: hidden).
    const dim3 grid(unsigned(std::min<int64_t>(std::max(inter, hidden), 8192)), unsigned(count), 3);
    switch (e.w1_type) {
      case WeightType::f4_e2m1:
        decode_fp4_experts_kernel<<<grid, 256, 0, ds>>>(e, s.active, a0, inter, hidden, w13, w2);
        break;
      case WeightType::f8_e4m3:
        decode_experts_kernel<WeightType::f8_e4m3>
            <<<grid, 256, 0, ds>>>(e, s.active, a0, inter, hidden, w13, w2);
        break;
      default:
        decode_experts_kernel<WeightType::bf16>
            <<<grid, 256, 0, ds>>>(e, s.active, a0, inter, hidden, w13, w2);
    }
    AGENTRT_CUDA_CHECK(cudaGetLastError());
  };

  // Chunk i decodes into buffer i % 2 once chunk i - 2's products are done with it.
  auto enqueue_decode = [&](int64_t i) {
    const int b = int(i % 2);
    if (i >= 2) AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(decode_stream_, consumed_[b], 0));
    const int64_t a0 = i * chunk;
    decode(a0, std::min(used, a0 + chunk) - a0, w13_[b].as<__nv_bfloat16>(),
           w2_[b].as<__nv_bfloat16>());
    AGENTRT_CUDA_CHECK(cudaEventRecord(decoded_[b], decode_stream_));
  };
  const int64_t chunks = (used + chunk - 1) / chunk;
  enqueue_decode(0);
  for (int64_t i = 0; i < chunks; ++i) {
    const int64_t a0 = i * chunk, a1 = std::min(used, a0 + chunk), s0 = seg[a0],
                  rows = seg[a1] - s0;
    const int b = int(i % 2);
    if (i + 1 < chunks) enqueue_decode(i + 1);
    auto* w13 = w13_[b].as<__nv_bfloat16>();
    auto* w2 = w2_[b].as<__nv_bfloat16>();
    int32_t most = 0;
    for (int64_t a = a0; a < a1; ++a) most = std::max(most, seg[a + 1] - seg[a]);
    const int64_t count = a1 - a0, slot_rows = copies * int64_t(most), stacked = count * slot_rows;
    place_.reserve(rows * int64_t(sizeof(RowPlace)));
    auto* place = place_.as<RowPlace>();
    place_rows_kernel<<<unsigned((rows + 255) / 256), 256, 0, stream>>>(s.seg_start, a0, a1, rows,
                                                                        copies, most, place);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    // Padding rows hold whatever was there: each product column depends only on its own row,
    // and the padding rows' products are never read.
    x_.reserve(stacked * hidden * 2);
    auto* x = x_.as<__nv_bfloat16>();
    gather_rows_kernel<<<unsigned(rows), 256, 0, stream>>>(h, s.order, s0, k, hidden, place, split,
                                                           x);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    mark("moe.experts.gather");
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream, decoded_[b], 0));
    mark("moe.experts.decode");  // what of the decode the products wait for
    gate_up_.reserve(stacked * 2 * inter * 4);
    float* gu = gate_up_.as<float>();
    gemm(w13, 2 * inter, hidden, 2 * per, x, slot_rows, gu, count);
    mark("moe.experts.gemm");
    act_.reserve(stacked * inter * 2);
    auto* act = act_.as<__nv_bfloat16>();
    swiglu_pairs_kernel<<<unsigned(rows), 256, 0, stream>>>(gu, s.order, weights, s0, inter, limit,
                                                            place, split, act);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    mark("moe.experts.swiglu");
    down_.reserve(stacked * hidden * 4);
    float* y = down_.as<float>();
    gemm(w2, hidden, inter, per, act, slot_rows, y, count);
    AGENTRT_CUDA_CHECK(cudaEventRecord(consumed_[b], stream));
    mark("moe.experts.gemm");
    scatter_rows_kernel<<<unsigned(rows), 256, 0, stream>>>(y, s0, hidden, place, split, pair_out);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    mark("moe.experts.scatter");
  }
}

cudaStream_t ExpertGemm::enter(cudaStream_t caller) {
  if (mark_ || !work_stream_) return caller;
  AGENTRT_CUDA_CHECK(cudaEventRecord(enter_, caller));
  AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(work_stream_, enter_, 0));
  return work_stream_;
}

void ExpertGemm::leave(cudaStream_t work, cudaStream_t caller) {
  if (work == caller) return;
  AGENTRT_CUDA_CHECK(cudaEventRecord(leave_, work));
  AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(caller, leave_, 0));
}

bool ExpertGemm::fp4_gemm_fits(const ExpertsDevice& e, int64_t inter, int64_t hidden) {
  return e.w1_type == WeightType::f4_e2m1 && e.w2_type == WeightType::f4_e2m1 &&
         inter % kFp4GemmCols == 0 && hidden % kFp4GemmCols == 0 && inter % kFp4GemmDepth == 0 &&
         hidden % kFp4GemmDepth == 0;
}

void ExpertGemm::run_fp4(const ExpertsDevice& e, const ExpertSegments& s, const int32_t* seg,
                         int64_t used, const float* h, const float* weights, int64_t k,
                         int64_t inter, int64_t hidden, float limit, float* pair_out,
                         cudaStream_t stream) {
  // Tiles of each used expert, its pairs in kFp4GemmRows, expert by expert (its weights and
  // activation rows stay in the L2 while its tiles run): first the gate/up product (2 * inter
  // columns), then the down product (hidden).
  std::vector<Fp4GemmTile> tiles;
  auto add_tiles = [&](int64_t cols) {
    for (int64_t a = 0; a < used; ++a)
      for (int64_t n0 = 0; n0 < cols; n0 += kFp4GemmCols)
        for (int32_t m0 = seg[a]; m0 < seg[a + 1]; m0 += kFp4GemmRows)
          tiles.push_back(
              {int32_t(a), m0, std::min<int32_t>(kFp4GemmRows, seg[a + 1] - m0), int32_t(n0)});
  };
  add_tiles(2 * inter);
  const int64_t up_tiles = int64_t(tiles.size());
  add_tiles(hidden);
  const int64_t bytes = int64_t(tiles.size() * sizeof(Fp4GemmTile));
  // run() synchronised the stream on entry, so the last call's upload from here has finished.
  if (host_tile_bytes_ < bytes) {
    if (host_tiles_) cudaFreeHost(host_tiles_);
    host_tiles_ = nullptr;
    AGENTRT_CUDA_CHECK(cudaMallocHost(&host_tiles_, size_t(bytes)));
    host_tile_bytes_ = bytes;
  }
  std::memcpy(host_tiles_, tiles.data(), size_t(bytes));
  tiles_.reserve(bytes);
  AGENTRT_CUDA_CHECK(
      cudaMemcpyAsync(tiles_.get(), host_tiles_, size_t(bytes), cudaMemcpyHostToDevice, stream));
  const int64_t pairs = seg[used];  // positions 0 .. pairs - 1 of the grouped order
  gate_up_.reserve(pairs * 2 * inter * 4);
  act_.reserve(pairs * inter * 4);
  const bool split = precision_ == GemmPrecision::bf16x2;
  const auto* all = tiles_.as<Fp4GemmTile>();
  Fp4GemmArgs up{e.w1,      e.w3,    inter,    s.active, h,
                 hidden,    s.order, k,        hidden,   gate_up_.as<float>(),
                 2 * inter, all,     up_tiles, split};
  fp4_grouped_gemm(up, stream);
  mark("moe.experts.gemm");
  swiglu_grouped(gate_up_.as<float>(), s.order, weights, pairs, inter, limit, act_.as<float>(),
                 stream);
  mark("moe.experts.swiglu");
  Fp4GemmArgs down{e.w2,
                   nullptr,
                   hidden,
                   s.active,
                   act_.as<float>(),
                   inter,
                   nullptr,
                   1,
                   inter,
                   pair_out,
                   hidden,
                   all + up_tiles,
                   int64_t(tiles.size()) - up_tiles,
                   split};
  fp4_grouped_gemm(down, stream);
  mark("moe.experts.gemm");
}

}  // namespace agentrt::engine::cuda
