// Grouped FP4 expert products on tensor cores, the stored weights decoded in the loader. The
// cuBLAS path (moe_gemm.cu) first wrote a bf16 copy of every used expert (four times the FP4
// bytes, written and read back: at 16K tokens most of the routed experts' time went to moving
// those copies) and gathered, padded and scattered the activations around one strided batched
// GEMM. Here each block takes a tile of one expert (64 grouped pairs x 128 output columns): its
// threads load the pairs' activation rows (through the pair order) and the weight rows' FP4
// words and e8m0 scales for the next 64 columns of K into registers while the warps multiply
// the current ones, then convert them into shared memory: activations as bf16 high + low parts
// (float32-like), weights as bf16 (an e2m1 value times a power-of-two scale is exact in bf16).
// Eight warps, 2 x 4, each own 32 x 32 of the tile: mma.sync m16n8k16, fragments by ldmatrix.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp4_gemm.h"
#include "engine/cuda/fp4_gemm_layout.h"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

using fp4_gemm::kBK;
using fp4_gemm::kBM;
using fp4_gemm::kBN;
using fp4_gemm::kRow;
constexpr int kThreadsPerTile = fp4_gemm::kThreads;
static_assert(kBM == kFp4GemmRows && kBN == kFp4GemmCols && kBK == kFp4GemmDepth);
static_assert(kBM * (kBK / 16) == kThreadsPerTile, "one thread stages 16 activations");
static_assert(kBN * 2 == kThreadsPerTile, "two threads stage a weight row");

// Eight FP4 values (one stored word) times the e8m0 scale `se` as four bf16 pairs, value 2i in
// the low half. e2m1_placed is the value times 2^-126 (exact; subnormal for +-0.5), so one
// multiply by 2^126 * scale restores and scales it, unless that factor overflows a float (scales
// above 2: two multiplies then).
__device__ __forceinline__ uint4 fp4_word_to_bf16(uint32_t w, uint8_t se) {
  float v[8] = {e2m1_placed<0>(w), e2m1_placed<1>(w), e2m1_placed<2>(w), e2m1_placed<3>(w),
                e2m1_placed<4>(w), e2m1_placed<5>(w), e2m1_placed<6>(w), e2m1_placed<7>(w)};
  if (se <= 128) {
    const float f = e8m0(se) * 0x1p126f;
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] *= f;
  } else {
    const float f = e8m0(se);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = v[i] * 0x1p126f * f;
  }
  return make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]),
                    pack_bf16(v[6], v[7]));
}

template <bool kSplit>
__global__ void __launch_bounds__(kThreadsPerTile, 2) fp4_gemm_kernel(Fp4GemmArgs g) {
  __shared__ __align__(16) uint16_t as[2 * kBM * kRow];  // activations: high parts, low parts
  __shared__ __align__(16) uint16_t bs[kBN * kRow];      // weights
  const Fp4GemmTile tile = g.tiles[blockIdx.x];
  const int32_t expert = g.active[tile.a];
  const bool upper = tile.n0 >= g.n_split;
  const WeightMatrix& w = (upper ? g.hi : g.lo)[expert];
  const int64_t n_base = tile.n0 - (upper ? g.n_split : 0);  // the tile's first row of w
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t K = g.k;

  const fp4_gemm::LoaderShare share = fp4_gemm::loader_share(tid);
  const int ar = share.a_row, ac = share.a_col, br = share.b_row, bq = share.b_block;
  const bool a_live = ar < tile.rows;
  const float* a_row = g.a;
  if (a_live) {
    const int64_t s = int64_t(tile.m0) + ar;
    a_row = g.a + (g.a_rows ? int64_t(g.a_rows[s]) / g.a_div : s) * g.lda;
  }
  const auto* b_row = static_cast<const uint8_t*>(w.data) + (n_base + br) * (K / 2);
  const auto* b_scales =
      static_cast<const uint8_t*>(w.scale) + (w.row_offset + n_base + br) * (K / 32);
  float4 a_next[4];
  uint4 b_next;
  uint8_t s_next;
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      a_next[i] = a_live ? __ldg(reinterpret_cast<const float4*>(a_row + k0 + ac) + i)
                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    b_next = __ldg(reinterpret_cast<const uint4*>(b_row + k0 / 2) + bq);
    s_next = __ldg(b_scales + k0 / 32 + bq);
  };
  auto stage = [&] {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      store_bf16_parts<kSplit>(as, int64_t(kBM) * kRow, ar * kRow + ac + 4 * i, a_next[i]);
    uint4* dst = reinterpret_cast<uint4*>(bs + br * kRow + bq * 32);
    dst[0] = fp4_word_to_bf16(b_next.x, s_next);
    dst[1] = fp4_word_to_bf16(b_next.y, s_next);
    dst[2] = fp4_word_to_bf16(b_next.z, s_next);
    dst[3] = fp4_word_to_bf16(b_next.w, s_next);
  };

  // Warp (wm, wn) owns rows wm * 32 .. + 31 and columns wn * 32 .. + 31 of the tile.
  const int wm = warp / 4, wn = warp % 4;
  float acc[2][4][4] = {};
  load(0);
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    __syncthreads();  // the last step's fragments are read
    stage();
    __syncthreads();
    if (k0 + kBK < K) load(k0 + kBK);  // in flight while the warps multiply
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t a[2][4], al[2][4], b[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int off = fp4_gemm::a_fragment_row(lane, wm, mt, ks);
        ldmatrix_x4(a[mt], as + off);
        if constexpr (kSplit) ldmatrix_x4(al[mt], as + kBM * kRow + off);
      }
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, bs + fp4_gemm::b_fragment_row(lane, wn, np, ks));
        b[2 * np][0] = r[0], b[2 * np][1] = r[1], b[2 * np + 1][0] = r[2], b[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          mma_bf16_16x8x16(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
          if constexpr (kSplit) mma_bf16_16x8x16(acc[mt][nt], al[mt], b[nt][0], b[nt][1]);
        }
    }
  }
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = fp4_gemm::out_row(lane, wm, mt, 2 * half);
      if (r >= tile.rows) continue;
      float* out = g.c + (int64_t(tile.m0) + r) * g.ldc + tile.n0;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)  // values 2 half and 2 half + 1: adjacent columns
        *reinterpret_cast<float2*>(out + fp4_gemm::out_col(lane, wn, nt, 0)) =
            make_float2(acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
    }
}

__global__ void swiglu_grouped_kernel(const float* gate_up, const int32_t* order,
                                      const float* weights, int64_t pairs, int64_t inter,
                                      float limit, float* act) {
  const int64_t quads = inter / 4;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs * quads;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = i / quads, q = i % quads;
    const float weight = weights[order[s]];
    const float4 g4 = reinterpret_cast<const float4*>(gate_up + s * 2 * inter)[q];
    const float4 u4 = reinterpret_cast<const float4*>(gate_up + s * 2 * inter + inter)[q];
    const float gv[4] = {g4.x, g4.y, g4.z, g4.w}, uv[4] = {u4.x, u4.y, u4.z, u4.w};
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float gj = gv[j], uj = uv[j];
      if (limit > 0) {
        gj = fminf(gj, limit);
        uj = fminf(fmaxf(uj, -limit), limit);
      }
      v[j] = weight * (gj / (1.0f + expf(-gj)) * uj);
    }
    reinterpret_cast<float4*>(act + s * inter)[q] = make_float4(v[0], v[1], v[2], v[3]);
  }
}

}  // namespace

void fp4_grouped_gemm(const Fp4GemmArgs& g, cudaStream_t stream) {
  if (g.tile_count == 0) return;
  if (g.tile_count > 0x7fffffff)
    throw std::invalid_argument("fp4_grouped_gemm: " + std::to_string(g.tile_count) + " tiles");
  if (g.split)
    fp4_gemm_kernel<true><<<unsigned(g.tile_count), kThreadsPerTile, 0, stream>>>(g);
  else
    fp4_gemm_kernel<false><<<unsigned(g.tile_count), kThreadsPerTile, 0, stream>>>(g);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void swiglu_grouped(const float* gate_up, const int32_t* order, const float* weights, int64_t pairs,
                    int64_t inter, float limit, float* act, cudaStream_t stream) {
  const int64_t total = pairs * (inter / 4);
  if (total == 0) return;
  const unsigned grid = unsigned(std::min<int64_t>((total + 255) / 256, 8192));
  swiglu_grouped_kernel<<<grid, 256, 0, stream>>>(gate_up, order, weights, pairs, inter, limit,
                                                  act);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
