// The routed experts of prefill-sized passes under GemmPrecision::fp8 (ExpertGemm::run_fp8):
// MXFP4 weights converted to e4m3 with 128 x 128 block scales (fp4_e4m3.h; exact for real
// checkpoints), the pairs' activation rows quantised to e4m3 per 128 columns (fp8_act_quant.h),
// and one cuBLASLt block-scaled FP8 GEMM per expert and matrix (Fp8Gemm::prepared_gemm). Each
// expert's rows are padded to a multiple of 16 with zero rows (zero scales), so its GEMM needs no
// tail and its activation scales are a block of their own ([column block][row], as cuBLASLt's
// VEC128 layout wants). The bf16 path's converted weights took 2 bytes a value and its GEMMs ran
// at the bf16 rate; these take 1 byte and run at twice the rate.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/float_bits.h"
#include "engine/cuda/fp4_e4m3.h"
#include "engine/cuda/fp8_act_quant.h"
#include "engine/cuda/fp8_gemm.h"
#include "engine/cuda/fp8_quant_warp.cuh"
#include "engine/cuda/grouped_fp8_gemm.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/moe_gemm.h"
#include "engine/cuda/segment_search.cuh"
#include "engine/cuda/swiglu.h"

namespace agentrt::engine::cuda {
namespace {

namespace fe = fp4_e4m3;
namespace aq = fp8_act_quant;

constexpr int64_t kSlotRows = 16;  // each expert's rows padded to a multiple of this

// Blocks of 256 threads for one warp per item (grid-stride beyond 65,536 blocks).
unsigned warp_grid(int64_t items) { return unsigned(std::min<int64_t>((items + 7) / 8, 65536)); }

// One 128 x 128 block (rb, cb) of an MXFP4 matrix w ([rows][cols], cols a multiple of 128) as
// e4m3 into q ([rows][cols]) and its float32 scale into scales (rows of ld floats; a row's last
// block also zeroes the padding up to ld). 128 threads: each warp converts 32 rows, half a warp a
// row (a lane's 32-bit word is 8 values, stored as 8 bytes: a row's 128 bytes in one coalesced
// store). Every load is issued first (a lane's 16 words and their codes, and the 4 codes of the
// thread's row for the block's largest), then the block's largest code is reduced, then the
// values converted: loading, reducing and converting row by row left the kernel waiting on
// memory (the 16K prefill's profile, fifteenth session).
__device__ void convert_block(const WeightMatrix& w, int64_t rb, int64_t cb, uint8_t* q,
                              float* scales, int64_t ld) {
  __shared__ int warp_max[4];
  const int t = int(threadIdx.x), lane = t % 32, warp = t / 32;
  const int64_t codes_per_row = w.cols / fe::kScaleColumns, row_bytes = w.cols / 2;
  const auto* codes =
      static_cast<const uint8_t*>(w.scale) + (w.row_offset + rb * fe::kBlock) * codes_per_row;
  const auto* data =
      static_cast<const uint8_t*>(w.data) + rb * fe::kBlock * row_bytes + cb * (fe::kBlock / 2);
  const int half = lane / 16, word = lane % 16;  // a row's 16 words of 8 values
  constexpr int kRows = 16;                      // rows a lane converts: warp * 32 + half + 2 i
  uint32_t bits[kRows];
  uint8_t code[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int r = warp * 32 + half + 2 * i;
    bits[i] = __ldg(reinterpret_cast<const uint32_t*>(data + r * row_bytes) + word);
    code[i] = __ldg(codes + r * codes_per_row + cb * 4 + word / 4);
  }
  const uint32_t mine =
      __ldg(reinterpret_cast<const uint32_t*>(codes + t * codes_per_row + cb * 4));
  const int emax = fe::block_largest_code(mine, warp_max);

#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t row = rb * fe::kBlock + warp * 32 + half + 2 * i;
    const float factor = fe::code_factor(code[i], emax);
    uint32_t packed[2];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const float a = fe::e2m1_value((bits[i] >> (8 * p)) & 15) * factor,
                  b = fe::e2m1_value((bits[i] >> (8 * p + 4)) & 15) * factor;
      const uint32_t pair =
          __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3) & 0xffffu;
      if (p % 2 == 0)
        packed[p / 2] = pair;
      else
        packed[p / 2] |= pair << 16;
    }
    *reinterpret_cast<uint2*>(q + row * w.cols + cb * fe::kBlock + word * 8) =
        make_uint2(packed[0], packed[1]);
  }
  const int64_t blocks = w.cols / fe::kBlock;
  if (t == 0) scales[rb * ld + cb] = fe::block_scale(emax);
  if (cb == blocks - 1)
    for (int64_t c = blocks + t; c < ld; c += blockDim.x) scales[rb * ld + c] = 0.0f;
}

__global__ void __launch_bounds__(128)
    convert_matrix_kernel(WeightMatrix w, uint8_t* q, float* scales, int64_t ld) {
  const int64_t blocks = w.cols / fe::kBlock;
  convert_block(w, blockIdx.x / blocks, blockIdx.x % blocks, q, scales, ld);
}

// The chunk's experts active[a0 + blockIdx.y]: z = 0 and 1 convert gate (w1) and up (w3) into one
// [2 inter][hidden] matrix (scales in rows of ld13), z = 2 down (w2, [hidden][inter], rows of
// ld2).
__global__ void __launch_bounds__(128)
    convert_experts_kernel(ExpertsDevice e, const int32_t* active, int64_t a0, int64_t inter,
                           int64_t hidden, uint8_t* q13, float* s13, int64_t ld13, uint8_t* q2,
                           float* s2, int64_t ld2) {
  const int64_t j = blockIdx.y, z = blockIdx.z, per = inter * hidden;
  const int32_t ex = active[a0 + j];
  const WeightMatrix w = z == 0 ? e.w1[ex] : z == 1 ? e.w3[ex] : e.w2[ex];
  const int64_t blocks = w.cols / fe::kBlock;
  if (int64_t(blockIdx.x) >= (w.rows / fe::kBlock) * blocks) return;
  uint8_t* q = z == 2 ? q2 + j * per : q13 + (2 * j + z) * per;
  float* s = z == 2 ? s2 + j * (hidden / fe::kBlock) * ld2
                    : s13 + (2 * j + z) * (inter / fe::kBlock) * ld13;
  convert_block(w, blockIdx.x / blocks, blockIdx.x % blocks, q, s, z == 2 ? ld2 : ld13);
}

// Where slot `slot` of the chunk (its padded rows, counted from pad[a0]) belongs: the expert a
// whose padded rows hold it, the row within them, and the pair it holds (-1: a padding row).
struct Slot {
  int64_t a, local, rows;  // rows: the expert's padded row count
  int32_t pair;
};
__device__ __forceinline__ Slot find_slot(const int32_t* pad, const int32_t* seg, int64_t a0,
                                          int64_t a1, int64_t slot) {
  const int32_t at = pad[a0] + int32_t(slot);
  const int64_t lo = segment_of(pad, a0, a1, at);
  Slot s;
  s.a = lo;
  s.local = at - pad[lo];
  s.rows = pad[lo + 1] - pad[lo];
  s.pair = s.local < seg[lo + 1] - seg[lo] ? seg[lo] + int32_t(s.local) : -1;
  return s;
}

// Block kb of a slot's row as e4m3 (one warp): values v (zeros for padding rows, whose scale is
// then 0 too), into q's row and the expert's own scale block [column block][row].
__device__ __forceinline__ void store_quantised(float4 v, bool padding, const Slot& s, int64_t slot,
                                                int64_t kb, int64_t blocks, int64_t first_slot,
                                                int64_t cols, uint8_t* q, float* scales) {
  const int lane = int(threadIdx.x % 32);
  float scale;
  const uint32_t codes = quantize_block_e4m3(v, &scale);
  *reinterpret_cast<uint32_t*>(q + slot * cols + kb * aq::kBlock + 4 * lane) = padding ? 0 : codes;
  if (lane == 0) scales[first_slot * blocks + kb * s.rows + s.local] = padding ? 0.0f : scale;
}

// Blocks of a slot's row one warp takes: the slot's search (find_slot: a binary search over the
// experts' padded starts, ~8 dependent loads) once for all of them and their loads in flight
// together. One warp per (slot, block), as before, spent most of a 16K prefill's 10 ms gather
// waiting on the search.
constexpr int64_t kWarpBlocks = 8;
// Groups of blocks a slot's row is split into: kWarpBlocks each, or the whole row under row
// scales (GroupedExpertProduct::row_scales: one scale for all of them).
__host__ __device__ inline int64_t slot_groups(int64_t blocks, bool row_scale) {
  return row_scale ? 1 : (blocks + kWarpBlocks - 1) / kWarpBlocks;
}
// warp_grid for one warp per group of each slot's `blocks` blocks.
unsigned slot_group_grid(int64_t slots, int64_t blocks, bool row_scale) {
  return warp_grid(slots * slot_groups(blocks, row_scale));
}

// Under row scales, one warp quantises a whole row of `blocks` blocks into q_row under one
// scale, its largest magnitude's, and returns that scale: load(kb) reads the lane's inputs for
// block kb, value(loaded) makes its 4 values. Rows of up to kHeldBlocks blocks (V4-Flash's
// SwiGLU rows: 16) are read once, every load issued before the first value is made, and stay
// in registers until quantised; longer ones are read twice, the second time from the caches
// (reading the SwiGLU rows twice made their pass 5.0 -> 8.4 ms in a 16K prefill).
constexpr int kHeldBlocks = 16;
template <class Lane>
struct GateUpPair {  // a SwiGLU block's gate and up values of one lane, as loaded (load_lane4)
  Lane a, b;
};
template <class Lane>
__device__ __forceinline__ GateUpPair<Lane> gate_up_pair(Lane a, Lane b) {
  return {a, b};
}
template <class Load, class Value>
__device__ float quantise_row_warp(Load load, Value value, int64_t blocks, uint8_t* q_row) {
  const int lane = int(threadIdx.x % 32);
  float amax = 0.0f;
  if (blocks <= kHeldBlocks) {
    decltype(load(0)) in[kHeldBlocks];
#pragma unroll
    for (int i = 0; i < kHeldBlocks; ++i)
      if (i < blocks) in[i] = load(i);
    float4 v[kHeldBlocks];
#pragma unroll
    for (int i = 0; i < kHeldBlocks; ++i) {
      v[i] = i < blocks ? value(in[i]) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      amax = fmaxf(amax, lane_amax(v[i]));
    }
    const int e = warp_scale_exponent(amax);
#pragma unroll
    for (int i = 0; i < kHeldBlocks; ++i)
      if (i < blocks)
        *reinterpret_cast<uint32_t*>(q_row + i * aq::kBlock + 4 * lane) = e4m3_codes(v[i], e);
    return aq::exp2_exact(e);
  }
  auto values = [&](int64_t kb0, float4(&v)[kWarpBlocks]) {
    decltype(load(0)) in[kWarpBlocks];
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i)
      if (kb0 + i < blocks) in[i] = load(kb0 + i);
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i)
      v[i] = kb0 + i < blocks ? value(in[i]) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  };
  for (int64_t kb0 = 0; kb0 < blocks; kb0 += kWarpBlocks) {
    float4 v[kWarpBlocks];
    values(kb0, v);
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i) amax = fmaxf(amax, lane_amax(v[i]));
  }
  const int e = warp_scale_exponent(amax);
  for (int64_t kb0 = 0; kb0 < blocks; kb0 += kWarpBlocks) {
    float4 v[kWarpBlocks];
    values(kb0, v);
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i)
      if (kb0 + i < blocks)
        *reinterpret_cast<uint32_t*>(q_row + (kb0 + i) * aq::kBlock + 4 * lane) =
            e4m3_codes(v[i], e);
  }
  return aq::exp2_exact(e);
}

// A slot's row scale into each of its column blocks' scale slots (the per-block layout,
// [column block][row] per expert), one lane a block; 0 for padding rows.
__device__ __forceinline__ void store_row_scale(float scale, const Slot& s, int64_t blocks,
                                                int64_t first_slot, float* scales) {
  for (int64_t kb = threadIdx.x % 32; kb < blocks; kb += 32)
    scales[first_slot * blocks + kb * s.rows + s.local] = s.pair < 0 ? 0.0f : scale;
}

// Row scales: each token's row of h quantised once (a token's slots all hold its row, under the
// same scale), one warp a row, into tq ([n][hidden] e4m3) and ts ([n]).
__global__ void quantize_tokens_kernel(const float* h, int64_t n, int64_t hidden, uint8_t* tq,
                                       float* ts) {
  const int lane = int(threadIdx.x % 32);
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t t = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; t < n; t += warps) {
    const float* row = h + t * hidden;
    const float scale = quantise_row_warp(
        [&](int64_t kb) {
          return __ldg(reinterpret_cast<const float4*>(row + kb * aq::kBlock) + lane);
        },
        [](float4 v) { return v; }, hidden / aq::kBlock, tq + t * hidden);
    if (lane == 0) ts[t] = scale;
  }
}

// Row scales: the slots' rows copied from their tokens' quantised rows (zeros and scale 0 for
// padding rows), one warp a slot: 1 byte a value read, where quantising each slot's row read
// its token's float32 row once per slot (k = 6 times a token).
__global__ void gather_rows_kernel(const uint8_t* tq, const float* ts, const int32_t* order,
                                   const int32_t* seg, const int32_t* pad, int64_t a0, int64_t a1,
                                   int64_t slots, int64_t k, int64_t hidden, uint8_t* xq,
                                   float* xs) {
  const int lane = int(threadIdx.x % 32);
  const int64_t blocks = hidden / aq::kBlock, chunks = hidden / 16;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t slot = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; slot < slots;
       slot += warps) {
    const Slot s = find_slot(pad, seg, a0, a1, slot);
    const int64_t token = s.pair >= 0 ? int64_t(order[s.pair] / k) : -1;
    const uint4* from = token >= 0 ? reinterpret_cast<const uint4*>(tq + token * hidden) : nullptr;
    uint4* to = reinterpret_cast<uint4*>(xq + slot * hidden);
    for (int64_t c = lane; c < chunks; c += 32)
      to[c] = from ? __ldg(from + c) : make_uint4(0u, 0u, 0u, 0u);
    store_row_scale(token >= 0 ? ts[token] : 0.0f, s, blocks, slot - s.local, xs);
  }
}

// The chunk's slots' rows of h (the pair's token row), quantised: one warp per (slot, group of
// kWarpBlocks blocks).
__global__ void gather_quantize_kernel(const float* h, const int32_t* order, const int32_t* seg,
                                       const int32_t* pad, int64_t a0, int64_t a1, int64_t slots,
                                       int64_t k, int64_t hidden, uint8_t* xq, float* xs) {
  const int lane = int(threadIdx.x % 32);
  const int64_t blocks = hidden / aq::kBlock, groups = slot_groups(blocks, false);
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; w < slots * groups;
       w += warps) {
    const int64_t slot = w / groups, kb0 = (w - slot * groups) * kWarpBlocks;
    const Slot s = find_slot(pad, seg, a0, a1, slot);
    const float* row = s.pair >= 0 ? h + int64_t(order[s.pair] / k) * hidden : nullptr;
    float4 v[kWarpBlocks];
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i)
      v[i] = row && kb0 + i < blocks
                 ? __ldg(reinterpret_cast<const float4*>(row + (kb0 + i) * aq::kBlock) + lane)
                 : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i)
      if (kb0 + i < blocks)
        store_quantised(v[i], s.pair < 0, s, slot, kb0 + i, blocks, slot - s.local, hidden, xq, xs);
  }
}

// A lane's 4 values of a 128-value block at `at` as stored: float32 (a float4), or bf16
// (GroupedExpertProduct::out_bf16: 4 in a uint2, half the bytes); as_float4 widens them.
__device__ __forceinline__ float4 load_lane4(const float* at, int lane) {
  return __ldg(reinterpret_cast<const float4*>(at) + lane);
}
__device__ __forceinline__ uint2 load_lane4(const __nv_bfloat16* at, int lane) {
  return __ldg(reinterpret_cast<const uint2*>(at) + lane);
}
__device__ __forceinline__ float4 as_float4(float4 v) { return v; }
__device__ __forceinline__ float4 as_float4(uint2 v) { return bf16x4_as_float4(v); }

// The slots' SwiGLU of their gate/up products (gu: [slot][2 inter] of GateUp, float or
// __nv_bfloat16), weighted by the pair's routing weight and quantised as the down product's
// activations: one warp per (slot, group of kWarpBlocks blocks).
template <class GateUp>
__global__ void swiglu_quantize_kernel(const GateUp* gu, const int32_t* order, const float* weights,
                                       const int32_t* seg, const int32_t* pad, int64_t a0,
                                       int64_t a1, int64_t slots, int64_t inter, float limit,
                                       bool row_scale, uint8_t* aq_out, float* as_out) {
  using Lane = decltype(load_lane4(gu, 0));
  const int lane = int(threadIdx.x % 32);
  const int64_t blocks = inter / aq::kBlock, groups = slot_groups(blocks, row_scale);
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; w < slots * groups;
       w += warps) {
    const int64_t slot = w / groups, kb0 = (w - slot * groups) * kWarpBlocks;
    const Slot s = find_slot(pad, seg, a0, a1, slot);
    const GateUp* row = gu + slot * 2 * inter;
    const float weight = s.pair >= 0 ? weights[order[s.pair]] : 0.0f;
    if (row_scale) {
      // Padding rows load nothing: their values are zeros (codes 0; scale 0 stored below).
      const float scale = quantise_row_warp(
          [&](int64_t kb) {
            const GateUp* at = row + kb * aq::kBlock;
            const Lane zero{};
            return s.pair < 0 ? gate_up_pair(zero, zero)
                              : gate_up_pair(load_lane4(at, lane), load_lane4(at + inter, lane));
          },
          [&](const GateUpPair<Lane>& gu) {
            const float4 g = as_float4(gu.a), u = as_float4(gu.b);
            return make_float4(
                swiglu_weighted(g.x, u.x, limit, weight), swiglu_weighted(g.y, u.y, limit, weight),
                swiglu_weighted(g.z, u.z, limit, weight), swiglu_weighted(g.w, u.w, limit, weight));
          },
          blocks, aq_out + slot * inter);
      store_row_scale(scale, s, blocks, slot - s.local, as_out);
      continue;
    }
    float4 g[kWarpBlocks], u[kWarpBlocks];
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i) {
      const bool live = s.pair >= 0 && kb0 + i < blocks;
      const GateUp* at = row + (kb0 + i) * aq::kBlock;
      g[i] = live ? as_float4(load_lane4(at, lane)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      u[i] = live ? as_float4(load_lane4(at + inter, lane)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int i = 0; i < kWarpBlocks; ++i) {
      if (kb0 + i >= blocks) continue;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (s.pair >= 0)
        v = make_float4(swiglu_weighted(g[i].x, u[i].x, limit, weight),
                        swiglu_weighted(g[i].y, u[i].y, limit, weight),
                        swiglu_weighted(g[i].z, u[i].z, limit, weight),
                        swiglu_weighted(g[i].w, u[i].w, limit, weight));
      store_quantised(v, s.pair < 0, s, slot, kb0 + i, blocks, slot - s.local, inter, aq_out,
                      as_out);
    }
  }
}

// Row scales with a block a row (ExpertGemm::set_block_rows): thread t of kRowThreads holds runs
// of 8 values t, t + kRowThreads, ... (kRuns of them), loaded before any is used; the row's
// largest magnitude meets in shared memory behind one barrier, then each thread writes its codes.
// A value's code depends only on it and the row's scale exponent, and the largest magnitude on
// no order, so these are the warp kernels' bytes: a warp holding a whole row took 180-216
// registers, one block of 8 warps an SM, and waited on each row's loads in turn.
constexpr int kRowThreads = 128;
constexpr int kMostRowRuns = 4;  // rows of up to 4 x 128 x 8 values (4,096) take these kernels

// 8 stored values (float32 or bf16) as loaded, then widened.
template <class T>
struct Run8;
template <>
struct Run8<float> {
  float4 a, b;
};
template <>
struct Run8<__nv_bfloat16> {
  uint4 a;
};
__device__ __forceinline__ Run8<float> load_run8(const float* at) {
  return {__ldg(reinterpret_cast<const float4*>(at)),
          __ldg(reinterpret_cast<const float4*>(at) + 1)};
}
__device__ __forceinline__ Run8<__nv_bfloat16> load_run8(const __nv_bfloat16* at) {
  return {__ldg(reinterpret_cast<const uint4*>(at))};
}
__device__ __forceinline__ float4 run_low(const Run8<float>& r) { return r.a; }
__device__ __forceinline__ float4 run_high(const Run8<float>& r) { return r.b; }
__device__ __forceinline__ float4 run_low(const Run8<__nv_bfloat16>& r) {
  return bf16x4_as_float4(make_uint2(r.a.x, r.a.y));
}
__device__ __forceinline__ float4 run_high(const Run8<__nv_bfloat16>& r) {
  return bf16x4_as_float4(make_uint2(r.a.z, r.a.w));
}

// The block's largest magnitude (every thread passing its own) as a scale exponent.
__device__ __forceinline__ int block_scale_exponent(float amax, float* warp_amax) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_amax[0];
#pragma unroll
  for (int w = 1; w < kRowThreads / 32; ++w) amax = fmaxf(amax, warp_amax[w]);
  return aq::scale_exponent(__float_as_uint(amax));
}

// Thread t's runs of 8 values (v[2 i], v[2 i + 1]: run t + kRowThreads i) as e4m3 into q_row.
template <int kRuns>
__device__ __forceinline__ void store_runs(const float4 (&v)[2 * kRuns], int e, int64_t runs,
                                           uint8_t* q_row) {
#pragma unroll
  for (int i = 0; i < kRuns; ++i) {
    const int64_t r = threadIdx.x + kRowThreads * i;
    if (r < runs)
      *reinterpret_cast<uint2*>(q_row + 8 * r) =
          make_uint2(e4m3_codes(v[2 * i], e), e4m3_codes(v[2 * i + 1], e));
  }
}

// quantize_tokens_kernel's rows, one block a token. kScatter (ExpertGemm::set_scatter_rows): the
// codes go straight to the token's k slot rows of xq (pair_slot: each pair's slot) and the scale
// to those slots' scale entries (store_row_scale's layout), which gather_rows_kernel would copy
// them to: no token rows, no copy (reading and writing the slots' rows again, 0.8 GB a layer at
// 16K rows). Padding slot rows are left as they are: their products are never read (the SwiGLU
// writes zeros for them, the down product stores none).
template <int kRuns, bool kScatter = false>
__global__ void __launch_bounds__(kRowThreads)
    quantize_token_rows_kernel(const float* h, int64_t hidden, uint8_t* tq, float* ts,
                               int64_t k = 0, const int32_t* pair_slot = nullptr,
                               const int32_t* pad = nullptr, const int32_t* seg = nullptr,
                               int64_t used = 0) {
  __shared__ float warp_amax[kRowThreads / 32];
  const int64_t t = blockIdx.x, runs = hidden / 8;
  const float* row = h + t * hidden;
  Run8<float> in[kRuns];
#pragma unroll
  for (int i = 0; i < kRuns; ++i) {
    const int64_t r = threadIdx.x + kRowThreads * i;
    in[i] = r < runs ? load_run8(row + 8 * r) : Run8<float>{};
  }
  float4 v[2 * kRuns];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kRuns; ++i) {
    v[2 * i] = run_low(in[i]);
    v[2 * i + 1] = run_high(in[i]);
    amax = fmaxf(amax, fmaxf(lane_amax(v[2 * i]), lane_amax(v[2 * i + 1])));
  }
  const int e = block_scale_exponent(amax, warp_amax);
  if constexpr (!kScatter) {
    store_runs<kRuns>(v, e, runs, tq + t * hidden);
    if (threadIdx.x == 0) ts[t] = aq::exp2_exact(e);
  } else {
    uint2 codes[kRuns];
#pragma unroll
    for (int i = 0; i < kRuns; ++i)
      codes[i] = make_uint2(e4m3_codes(v[2 * i], e), e4m3_codes(v[2 * i + 1], e));
    for (int64_t j = 0; j < k; ++j) {
      uint8_t* q_row = tq + int64_t(pair_slot[t * k + j]) * hidden;
#pragma unroll
      for (int i = 0; i < kRuns; ++i) {
        const int64_t r = threadIdx.x + kRowThreads * i;
        if (r < runs) *reinterpret_cast<uint2*>(q_row + 8 * r) = codes[i];
      }
    }
    // Warp w writes the scales of the token's slots j = w, w + 4, ...
    const int64_t blocks = hidden / aq::kBlock;
    for (int64_t j = threadIdx.x / 32; j < k; j += kRowThreads / 32) {
      const int64_t slot = pair_slot[t * k + j];
      const Slot sl = find_slot(pad, seg, 0, used, slot);
      store_row_scale(aq::exp2_exact(e), sl, blocks, slot - sl.local, ts);
    }
  }
}

// swiglu_quantize_kernel's rows under row scales, one block a slot.
template <class GateUp, int kRuns>
__global__ void __launch_bounds__(kRowThreads)
    swiglu_rows_kernel(const GateUp* gu, const int32_t* order, const float* weights,
                       const int32_t* seg, const int32_t* pad, int64_t used, int64_t inter,
                       float limit, uint8_t* aq_out, float* as_out) {
  __shared__ float warp_amax[kRowThreads / 32];
  const int64_t slot = blockIdx.x, runs = inter / 8;
  const Slot s = find_slot(pad, seg, 0, used, slot);
  const GateUp* row = gu + slot * 2 * inter;
  const float weight = s.pair >= 0 ? weights[order[s.pair]] : 0.0f;
  // Padding rows load nothing: their values are zeros (codes 0; scale 0 stored below).
  Run8<GateUp> g[kRuns], u[kRuns];
#pragma unroll
  for (int i = 0; i < kRuns; ++i) {
    const int64_t r = threadIdx.x + kRowThreads * i;
    const bool live = s.pair >= 0 && r < runs;
    g[i] = live ? load_run8(row + 8 * r) : Run8<GateUp>{};
    u[i] = live ? load_run8(row + inter + 8 * r) : Run8<GateUp>{};
  }
  auto swiglu4 = [&](float4 a, float4 b) {
    return make_float4(
        swiglu_weighted(a.x, b.x, limit, weight), swiglu_weighted(a.y, b.y, limit, weight),
        swiglu_weighted(a.z, b.z, limit, weight), swiglu_weighted(a.w, b.w, limit, weight));
  };
  float4 v[2 * kRuns];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kRuns; ++i) {
    v[2 * i] = swiglu4(run_low(g[i]), run_low(u[i]));
    v[2 * i + 1] = swiglu4(run_high(g[i]), run_high(u[i]));
    amax = fmaxf(amax, fmaxf(lane_amax(v[2 * i]), lane_amax(v[2 * i + 1])));
  }
  const int e = block_scale_exponent(amax, warp_amax);
  store_runs<kRuns>(v, e, runs, aq_out + slot * inter);
  if (threadIdx.x < 32)
    store_row_scale(aq::exp2_exact(e), s, inter / aq::kBlock, slot - s.local, as_out);
}

// set_scatter_rows: pair_slot[order[s.pair]] = slot for every pair's slot.
__global__ void pair_slots_kernel(const int32_t* order, const int32_t* seg, const int32_t* pad,
                                  int64_t used, int64_t slots, int32_t* pair_slot) {
  const int64_t slot = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (slot >= slots) return;
  const Slot s = find_slot(pad, seg, 0, used, slot);
  if (s.pair >= 0) pair_slot[order[s.pair]] = int32_t(slot);
}

// The runs a thread of a row block takes for rows of `cols` values (8 | cols), 0 where more than
// kMostRowRuns.
int row_runs(int64_t cols) {
  const int64_t runs = (cols / 8 + kRowThreads - 1) / kRowThreads;
  return cols % 8 == 0 && runs <= kMostRowRuns ? int(runs) : 0;
}

// f(std::integral_constant<int, runs>{}) for runs 1 .. kMostRowRuns (row_runs' non-zero values).
template <class F>
void with_runs(int runs, F f) {
  static_assert(kMostRowRuns == 4, "a case per run count");
  switch (runs) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    default:
      throw std::logic_error("with_runs: " + std::to_string(runs) + " runs a thread");
  }
}

// pair_out[s0 + r] = the down product of the chunk's pair s0 + r, from its slot; one block a row.
__global__ void scatter_slots_kernel(const float* y, const int32_t* seg, const int32_t* pad,
                                     int64_t a0, int64_t a1, int64_t hidden, float* pair_out) {
  const int32_t pair = seg[a0] + int32_t(blockIdx.x);
  const int64_t lo = segment_of(seg, a0, a1, pair);
  const int64_t slot = pad[lo] - pad[a0] + (pair - seg[lo]);
  const float4* src = reinterpret_cast<const float4*>(y + slot * hidden);
  float4* dst = reinterpret_cast<float4*>(pair_out + int64_t(pair) * hidden);
  for (int64_t c = threadIdx.x; c < hidden / 4; c += blockDim.x) dst[c] = src[c];
}

// Each expert's rows padded to kSlotRows: pad[a] is the first of expert a's, pad[used] their total.
void padded_starts(const int32_t* seg, int64_t used, int32_t* pad) {
  pad[0] = 0;
  for (int64_t a = 0; a < used; ++a)
    pad[a + 1] = pad[a] + int32_t((seg[a + 1] - seg[a] + kSlotRows - 1) / kSlotRows * kSlotRows);
}

}  // namespace

void ExpertGemm::reserve_fp8_slots(int64_t slots, int64_t inter, int64_t hidden, bool slot_outputs,
                                   int64_t gate_up_value_bytes) {
  x_.reserve(slots * hidden);
  xs_.reserve(slots * (hidden / aq::kBlock) * 4);
  gate_up_.reserve(slots * 2 * inter * gate_up_value_bytes);
  act_.reserve(slots * inter);
  as_.reserve(slots * (inter / aq::kBlock) * 4);
  if (slot_outputs) down_.reserve(slots * hidden * 4);
}

void convert_fp4_e4m3(const WeightMatrix& w, uint8_t* q, float* scales, int64_t ld,
                      cudaStream_t stream) {
  if (w.type != WeightType::f4_e2m1 || w.rows % fe::kBlock != 0 || w.cols % fe::kBlock != 0)
    throw std::invalid_argument("convert_fp4_e4m3: an FP4 matrix of whole 128 x 128 blocks, not " +
                                std::to_string(w.rows) + " x " + std::to_string(w.cols));
  const int64_t blocks = (w.rows / fe::kBlock) * (w.cols / fe::kBlock);
  if (blocks == 0) return;
  convert_matrix_kernel<<<unsigned(blocks), 128, 0, stream>>>(w, q, scales, ld);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

bool ExpertGemm::fp8_fits(const ExpertsDevice& e, int64_t inter, int64_t hidden) const {
  return fp8_[0] && fp8_[0]->takes_prepared() && e.w1_type == WeightType::f4_e2m1 &&
         e.w2_type == WeightType::f4_e2m1 && inter % fe::kBlock == 0 && hidden % fe::kBlock == 0;
}

bool ExpertGemm::run_fp8(const ExpertsDevice& e, const ExpertSegments& s, const int32_t* seg,
                         int64_t used, const float* h, const float* weights, int64_t k,
                         int64_t inter, int64_t hidden, float limit, float* pair_out,
                         cudaStream_t caller) {
  // On a stream of the highest priority where asked for, joined to the caller's (enter()).
  const cudaStream_t stream = enter(caller);
  // The padded row starts, in pinned memory after the segment starts (run() sized it), uploaded
  // once.
  int32_t* pad = host_ + 1 + (s.experts + 1);
  padded_starts(seg, used, pad);
  const int64_t per = inter * hidden;  // values per matrix, one byte each as e4m3
  const int64_t chunk = std::clamp<int64_t>(chunk_bytes_ / 2 / (3 * per), 1, used);
  const int64_t chunks = (used + chunk - 1) / chunk;
  int64_t most_slots = 0;
  for (int64_t i = 0; i < chunks; ++i)
    most_slots =
        std::max<int64_t>(most_slots, pad[std::min(used, (i + 1) * chunk)] - pad[i * chunk]);
  const int64_t ld13 = fp8_[0]->weight_scale_ld(hidden), ld2 = fp8_[0]->weight_scale_ld(inter),
                s13 = 2 * (inter / fe::kBlock) * ld13, s2 = (hidden / fe::kBlock) * ld2;
  for (int b = 0; b < 2; ++b) {
    q13_[b].reserve(chunk * 2 * per);
    q2_[b].reserve(chunk * per);
    s13_[b].reserve(chunk * s13 * 4);
    s2_[b].reserve(chunk * s2 * 4);
  }
  reserve_fp8_slots(most_slots, inter, hidden, true, 4);
  pad_.reserve((used + 1) * 4);

  // Every expert's two GEMMs, checked before the first launch: all of them on FP8 or none.
  auto up_gemm = [&](int64_t a, int64_t a0, int b) {
    const int64_t j = a - a0, first = pad[a] - pad[a0];
    return Fp8Gemm::Prepared{2 * inter,
                             pad[a + 1] - pad[a],
                             hidden,
                             2 * inter,
                             q13_[b].as<uint8_t>() + j * 2 * per,
                             s13_[b].as<float>() + j * s13,
                             x_.as<uint8_t>() + first * hidden,
                             xs_.as<float>() + first * (hidden / aq::kBlock),
                             gate_up_.as<float>() + first * 2 * inter};
  };
  auto down_gemm = [&](int64_t a, int64_t a0, int b) {
    const int64_t j = a - a0, first = pad[a] - pad[a0];
    return Fp8Gemm::Prepared{hidden,
                             pad[a + 1] - pad[a],
                             inter,
                             hidden,
                             q2_[b].as<uint8_t>() + j * per,
                             s2_[b].as<float>() + j * s2,
                             act_.as<uint8_t>() + first * inter,
                             as_.as<float>() + first * (inter / aq::kBlock),
                             down_.as<float>() + first * hidden};
  };
  // Expert a's GEMMs run on stream (a - a0) % fp8_streams_ of its chunk, with that stream's
  // Fp8Gemm (its own workspace and algorithm cache).
  auto gemm_of = [&](int64_t a, int64_t a0) { return fp8_[(a - a0) % fp8_streams_].get(); };
  for (int64_t i = 0; i < chunks; ++i)
    for (int64_t a = i * chunk; a < std::min(used, (i + 1) * chunk); ++a)
      if (!gemm_of(a, i * chunk)->prepared_ok(up_gemm(a, i * chunk, int(i % 2))) ||
          !gemm_of(a, i * chunk)->prepared_ok(down_gemm(a, i * chunk, int(i % 2)))) {
        ++fp8_counts_.expert_fallbacks;
        leave(stream, caller);
        return false;
      }
  ++fp8_counts_.experts;
  AGENTRT_CUDA_CHECK(
      cudaMemcpyAsync(pad_.get(), pad, size_t(used + 1) * 4, cudaMemcpyHostToDevice, stream));
  const int32_t* d_pad = pad_.as<int32_t>();

  // Chunk i converts into buffer i % 2 on the decode stream once chunk i - 2's GEMMs are done
  // with it, as run()'s bf16 path does.
  AGENTRT_CUDA_CHECK(cudaEventRecord(start_, stream));
  AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(decode_stream_, start_, 0));
  // Every matrix has (inter / 128) * (hidden / 128) blocks.
  const int64_t grid_x = (inter / fe::kBlock) * (hidden / fe::kBlock);
  auto enqueue_convert = [&](int64_t i) {
    const int b = int(i % 2);
    if (i >= 2) AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(decode_stream_, consumed_[b], 0));
    const int64_t a0 = i * chunk, count = std::min(used, a0 + chunk) - a0;
    convert_experts_kernel<<<dim3(unsigned(grid_x), unsigned(count), 3), 128, 0, decode_stream_>>>(
        e, s.active, a0, inter, hidden, q13_[b].as<uint8_t>(), s13_[b].as<float>(), ld13,
        q2_[b].as<uint8_t>(), s2_[b].as<float>(), ld2);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    AGENTRT_CUDA_CHECK(cudaEventRecord(decoded_[b], decode_stream_));
  };
  // The chunk's experts' GEMMs of one matrix: the side stream starts after what stream has
  // enqueued, and stream goes on once the side stream's are done.
  auto gemms = [&](auto prepared, int64_t a0, int64_t a1) {
    const bool two = fp8_streams_ == 2 && a1 - a0 > 1;
    if (two) {
      AGENTRT_CUDA_CHECK(cudaEventRecord(fp8_fork_, stream));
      AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(fp8_side_, fp8_fork_, 0));
    }
    for (int64_t a = a0; a < a1; ++a)
      gemm_of(a, a0)->prepared_gemm(prepared(a), two && (a - a0) % 2 == 1 ? fp8_side_ : stream);
    if (two) {
      AGENTRT_CUDA_CHECK(cudaEventRecord(fp8_join_, fp8_side_));
      AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream, fp8_join_, 0));
    }
  };
  enqueue_convert(0);
  for (int64_t i = 0; i < chunks; ++i) {
    const int64_t a0 = i * chunk, a1 = std::min(used, a0 + chunk), slots = pad[a1] - pad[a0],
                  rows = seg[a1] - seg[a0];
    const int b = int(i % 2);
    if (i + 1 < chunks) enqueue_convert(i + 1);
    gather_quantize_kernel<<<slot_group_grid(slots, hidden / aq::kBlock, false), 256, 0, stream>>>(
        h, s.order, s.seg_start, d_pad, a0, a1, slots, k, hidden, x_.as<uint8_t>(),
        xs_.as<float>());
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    mark("moe.experts.gather");
    AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream, decoded_[b], 0));
    mark("moe.experts.decode");
    gemms([&](int64_t a) { return up_gemm(a, a0, b); }, a0, a1);
    mark("moe.experts.gemm");
    swiglu_quantize_kernel<<<slot_group_grid(slots, inter / aq::kBlock, false), 256, 0, stream>>>(
        gate_up_.as<float>(), s.order, weights, s.seg_start, d_pad, a0, a1, slots, inter, limit,
        false, act_.as<uint8_t>(), as_.as<float>());
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    mark("moe.experts.swiglu");
    gemms([&](int64_t a) { return down_gemm(a, a0, b); }, a0, a1);
    AGENTRT_CUDA_CHECK(cudaEventRecord(consumed_[b], stream));
    mark("moe.experts.gemm");
    scatter_slots_kernel<<<unsigned(rows), 256, 0, stream>>>(down_.as<float>(), s.seg_start, d_pad,
                                                             a0, a1, hidden, pair_out);
    AGENTRT_CUDA_CHECK(cudaGetLastError());
    mark("moe.experts.scatter");
  }
  leave(stream, caller);
  return true;
}

void ExpertGemm::run_fp8_grouped(const ExpertsDevice& e, const ExpertSegments& s,
                                 const int32_t* seg, int64_t used, const float* h,
                                 const float* weights, int64_t k, int64_t inter, int64_t hidden,
                                 float limit, float* pair_out, cudaStream_t caller) {
  const cudaStream_t stream = enter(caller);
  // Pinned, after the segment starts (run() sized it): the padded row starts, then both
  // products' tile starts, uploaded in one copy.
  int32_t* pad = host_ + 1 + (s.experts + 1);
  int32_t* up_tiles = pad + (used + 1);
  int32_t* down_tiles = up_tiles + (used + 1);
  padded_starts(seg, used, pad);
  const int64_t slots = pad[used];
  const int64_t up_count = grouped_expert_tiles(pad, used, 2 * inter, up_tiles),
                down_count = grouped_expert_tiles(pad, used, hidden, down_tiles);
  // Sized for the most any pass of this many pairs can need (every expert used, each padding
  // 15 rows), not this pass's: a buffer grown mid-prefill is a cudaFree and cudaMalloc of up to
  // gigabytes, which waits for the GPU and left it idle 2.8 ms in a 16K prefill (CUPTI trace,
  // thirty-first session).
  const int64_t most_slots = (seg[used] - seg[0]) + s.experts * (kSlotRows - 1);
  // The down product writes the pairs' rows (no slot outputs); the gate/up products take 2 or 4
  // bytes a value (set_gate_up_bf16).
  reserve_fp8_slots(std::max(slots, most_slots), inter, hidden, false, gate_up_bf16_ ? 2 : 4);
  pad_.reserve(3 * (s.experts + 1) * 4);
  block_max_.reserve(std::max(grouped_expert_scratch_ints(s.experts, 2 * inter, hidden),
                              grouped_expert_scratch_ints(s.experts, hidden, inter)) *
                     4);
  ++fp8_counts_.experts;
  AGENTRT_CUDA_CHECK(
      cudaMemcpyAsync(pad_.get(), pad, size_t(3 * (used + 1)) * 4, cudaMemcpyHostToDevice, stream));
  const int32_t* d_pad = pad_.as<int32_t>();

  const bool rs = fp8_row_scales_;
  if (rs) {
    // Each token's row quantised once, then copied into its slots (every token has k pairs:
    // the routing picks k experts a row).
    const int64_t tokens = (seg[used] - seg[0]) / std::max<int64_t>(k, 1);
    tq_.reserve(tokens * hidden);
    ts_.reserve(tokens * 4);
    const bool blocks = block_rows_ && row_runs(hidden) > 0 && tokens > 0;
    if (blocks && scatter_rows_) {
      // Each token's codes and scale written straight into its slots.
      pair_slot_.reserve(tokens * k * 4);
      pair_slots_kernel<<<unsigned((slots + 255) / 256), 256, 0, stream>>>(
          s.order, s.seg_start, d_pad, used, slots, pair_slot_.as<int32_t>());
      AGENTRT_CUDA_CHECK(cudaGetLastError());
      with_runs(row_runs(hidden), [&](auto runs) {
        quantize_token_rows_kernel<decltype(runs)::value, true>
            <<<unsigned(tokens), kRowThreads, 0, stream>>>(
                h, hidden, x_.as<uint8_t>(), xs_.as<float>(), k, pair_slot_.as<int32_t>(), d_pad,
                s.seg_start, used);
      });
    } else {
      if (blocks)
        with_runs(row_runs(hidden), [&](auto runs) {
          quantize_token_rows_kernel<decltype(runs)::value>
              <<<unsigned(tokens), kRowThreads, 0, stream>>>(h, hidden, tq_.as<uint8_t>(),
                                                             ts_.as<float>());
        });
      else
        quantize_tokens_kernel<<<warp_grid(tokens), 256, 0, stream>>>(
            h, tokens, hidden, tq_.as<uint8_t>(), ts_.as<float>());
      AGENTRT_CUDA_CHECK(cudaGetLastError());
      gather_rows_kernel<<<warp_grid(slots), 256, 0, stream>>>(
          tq_.as<uint8_t>(), ts_.as<float>(), s.order, s.seg_start, d_pad, 0, used, slots, k,
          hidden, x_.as<uint8_t>(), xs_.as<float>());
    }
  } else {
    gather_quantize_kernel<<<slot_group_grid(slots, hidden / aq::kBlock, false), 256, 0, stream>>>(
        h, s.order, s.seg_start, d_pad, 0, used, slots, k, hidden, x_.as<uint8_t>(),
        xs_.as<float>());
  }
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  mark("moe.experts.gather");
  GroupedExpertProduct up;
  up.x = x_.as<uint8_t>();
  up.x_scales = xs_.as<float>();
  up.pad = d_pad;
  up.tile_start = d_pad + (used + 1);
  up.active = s.active;
  up.experts = e;
  up.used = used;
  up.n = 2 * inter;
  up.k = hidden;
  up.tiles = up_count;
  if (gate_up_bf16_)
    up.out_bf16 = gate_up_.as<__nv_bfloat16>();
  else
    up.out = gate_up_.as<float>();
  up.ld_out = 2 * inter;
  up.block_max = block_max_.as<int32_t>();
  up.row_scales = rs;
  grouped_expert_product(up, sms_, stream);
  mark("moe.experts.gemm");
  const unsigned swiglu_grid = slot_group_grid(slots, inter / aq::kBlock, rs);
  if (rs && block_rows_ && row_runs(inter) > 0 && slots > 0)
    with_runs(row_runs(inter), [&](auto runs) {
      if (gate_up_bf16_)
        swiglu_rows_kernel<__nv_bfloat16, decltype(runs)::value>
            <<<unsigned(slots), kRowThreads, 0, stream>>>(
                gate_up_.as<__nv_bfloat16>(), s.order, weights, s.seg_start, d_pad, used, inter,
                limit, act_.as<uint8_t>(), as_.as<float>());
      else
        swiglu_rows_kernel<float, decltype(runs)::value>
            <<<unsigned(slots), kRowThreads, 0, stream>>>(gate_up_.as<float>(), s.order, weights,
                                                          s.seg_start, d_pad, used, inter, limit,
                                                          act_.as<uint8_t>(), as_.as<float>());
    });
  else if (gate_up_bf16_)
    swiglu_quantize_kernel<<<swiglu_grid, 256, 0, stream>>>(
        gate_up_.as<__nv_bfloat16>(), s.order, weights, s.seg_start, d_pad, 0, used, slots, inter,
        limit, rs, act_.as<uint8_t>(), as_.as<float>());
  else
    swiglu_quantize_kernel<<<swiglu_grid, 256, 0, stream>>>(
        gate_up_.as<float>(), s.order, weights, s.seg_start, d_pad, 0, used, slots, inter, limit,
        rs, act_.as<uint8_t>(), as_.as<float>());
  AGENTRT_CUDA_CHECK(cudaGetLastError());
  mark("moe.experts.swiglu");
  GroupedExpertProduct down = up;
  down.x = act_.as<uint8_t>();
  down.x_scales = as_.as<float>();
  down.tile_start = d_pad + 2 * (used + 1);
  down.down = true;
  down.n = hidden;
  down.k = inter;
  down.tiles = down_count;
  // Straight into the pairs' rows (no slot rows, no scatter pass: 1.6 GB a layer at 16K rows),
  // or their bf16 rows in the first half of that memory (set_pair_out_bf16: half the bytes).
  down.out = pair_out_bf16_ ? nullptr : pair_out;
  down.out_bf16 = pair_out_bf16_ ? reinterpret_cast<__nv_bfloat16*>(pair_out) : nullptr;
  down.ld_out = hidden;
  down.out_start = s.seg_start;
  grouped_expert_product(down, sms_, stream);
  mark("moe.experts.gemm");
  leave(stream, caller);
}

}  // namespace agentrt::engine::cuda
