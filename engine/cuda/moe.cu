// The routed experts on the GPU (engine/moe.h): routing per row, then the (row, expert) pairs
// grouped by expert on the device and each used expert's weights streamed once for all its rows
// (gate and up fused with the SwiGLU clamps, then down scaled by the routing weight), then a
// fixed-order sum per row. Grids are sized by min(experts, pairs) and idle blocks exit, so no
// count ever travels to the host (the step can be captured in a CUDA graph).
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/float_bits.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/moe_gemm.h"
#include "engine/cuda/route_warp.cuh"
#include "engine/cuda/weight_decode.cuh"

namespace agentrt::engine::cuda {
namespace {

// The k choices of one warp through shared memory (lane i < k returns the i-th): k rounds of a
// warp argmax, ties to the lower index (the CPU's comparator). Chosen experts are marked by -inf
// in `biased` (read only for selection).
__device__ int choose_in_shared(float* biased, int64_t E, int64_t k, int lane) {
  int mine = 0;
  for (int64_t i = 0; i < k; ++i) {
    float bv = -INFINITY;
    int be = INT_MAX;
    for (int64_t e = lane; e < E; e += 32)
      if (biased[e] > bv || (biased[e] == bv && int(e) < be)) {
        bv = biased[e];
        be = int(e);
      }
    for (int off = 16; off > 0; off >>= 1) {  // every lane ends with the winner
      const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
      const int oe = __shfl_xor_sync(0xffffffffu, be, off);
      if (ov > bv || (ov == bv && oe < be)) {
        bv = ov;
        be = oe;
      }
    }
    if (be == INT_MAX) be = 0;  // every remaining score NaN or -inf: stay in bounds
    if (lane == i) mine = be;
    __syncwarp();  // every lane has read `biased` before the winner is marked
    if (lane == 0) biased[be] = -INFINITY;
    __syncwarp();
  }
  return mine;
}

// One block a row: every thread computes scores into shared memory (softmax needs the row's
// sum), then one warp chooses. (Under CudaOptions::fused_routing the streamed experts route their
// rows in one warp instead: route_warp.cuh.)
__global__ void route_kernel(const float* logits, const int32_t* tokens, const int32_t* tid2eid,
                             const float* bias, int64_t E, int64_t k, ScoreFunc func, float scaling,
                             int32_t* chosen, float* weights) {
  pdl_begin();
  const int64_t t = blockIdx.x;
  extern __shared__ float smem[];  // scores [E], biased [E]
  __shared__ float red[32];
  float* scores = smem;
  float* biased = smem + E;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    scores[e] = score_of(func, logits[t * E + e]);
  if (func == ScoreFunc::softmax) {
    float mx = -INFINITY;
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) mx = fmaxf(mx, scores[e]);
    mx = block_max(mx, red);
    float s = 0.0f;
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) s += (scores[e] = expf(scores[e] - mx));
    s = block_sum(s, red);
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) scores[e] /= s;
  }
  if (!tid2eid)
    for (int64_t e = threadIdx.x; e < E; e += blockDim.x) biased[e] = scores[e] + bias[e];
  __syncthreads();
  // One warp chooses; lane i < k keeps the i-th choice, and the lanes write the choices and
  // weights side by side (no thread reads the choices back from memory to weigh them).
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  int32_t mine = 0;
  if (tid2eid) {
    if (lane < k) mine = tid2eid[int64_t(tokens[t]) * k + lane];
  } else {
    mine = choose_in_shared(biased, E, k, lane);
  }
  const float score = lane < k && mine >= 0 && mine < E ? scores[mine] : 0.0f;
  // The choices' scores added in choice order, as the CPU does.
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) sum += __shfl_sync(0xffffffffu, score, int(i));
  if (lane < k) {
    chosen[t * k + lane] = mine;
    weights[t * k + lane] = score / (sum + 1e-20f) * scaling;
  }
}

struct Groups {
  int32_t* order;      // [P] pair indices sorted by expert (stable)
  int32_t* slot;       // [P] position of each pair in `order`
  int32_t* active;     // [E] experts with at least one pair
  int32_t* seg_start;  // [E + 1] their segments in `order`
  int32_t* n_active;   // [1]
  int32_t* hist;       // [group_blocks(P)][E]: group_count_kernel's counts, then cursors
  float* act;          // [P][inter]
  float* pair_out;     // [P][hidden]
};

size_t align16(size_t b) { return (b + 15) / 16 * 16; }

// Many pairs (a prefill's) are grouped by blocks of kGroupChunk pairs each (group_count_kernel,
// group_layout_kernel, group_fill_kernel): group_kernel alone is one block, and took 0.5 ms a
// layer of a 16K prefill (98,304 pairs) on an H100.
constexpr int64_t kGroupChunk = 2048;
int64_t group_blocks(int64_t P) { return (P + kGroupChunk - 1) / kGroupChunk; }

Groups carve(void* scratch, int64_t P, int64_t E, int64_t inter) {
  char* p = static_cast<char*>(scratch);
  Groups g;
  g.order = reinterpret_cast<int32_t*>(p);
  p += align16(P * 4);
  g.slot = reinterpret_cast<int32_t*>(p);
  p += align16(P * 4);
  g.active = reinterpret_cast<int32_t*>(p);
  p += align16(E * 4);
  g.seg_start = reinterpret_cast<int32_t*>(p);
  p += align16((E + 1) * 4);
  g.n_active = reinterpret_cast<int32_t*>(p);
  p += 16;
  g.hist = reinterpret_cast<int32_t*>(p);
  p += align16(group_blocks(P) * E * 4);
  g.act = reinterpret_cast<float*>(p);
  p += align16(P * inter * 4);
  g.pair_out = reinterpret_cast<float*>(p);
  return g;
}

// Inclusive sums over the block of (a, b), in place; blockDim.x is a multiple of 32 (<= 1024).
__device__ void block_scan2(int32_t& a, int32_t& b, int32_t* tot_a, int32_t* tot_b) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int off = 1; off < 32; off <<= 1) {
    const int32_t na = __shfl_up_sync(0xffffffffu, a, off),
                  nb = __shfl_up_sync(0xffffffffu, b, off);
    if (lane >= off) a += na, b += nb;
  }
  if (lane == 31) tot_a[warp] = a, tot_b[warp] = b;
  __syncthreads();
  if (warp == 0) {
    int32_t ta = lane < warps ? tot_a[lane] : 0, tb = lane < warps ? tot_b[lane] : 0;
    for (int off = 1; off < 32; off <<= 1) {
      const int32_t na = __shfl_up_sync(0xffffffffu, ta, off),
                    nb = __shfl_up_sync(0xffffffffu, tb, off);
      if (lane >= off) ta += na, tb += nb;
    }
    if (lane < warps) tot_a[lane] = ta, tot_b[lane] = tb;
  }
  __syncthreads();
  if (warp > 0) a += tot_a[warp - 1], b += tot_b[warp - 1];
}

// The used experts' segments in expert order from each expert's count (count(e), every thread
// of the block calling): g.active, g.seg_start, *g.n_active; cursor(e, start) gets each
// expert's first place (a block scan over the experts, kept across the block's passes in carry).
template <class Count, class Cursor>
__device__ void lay_out_segments(int64_t E, Count count, Cursor cursor, const Groups& g) {
  __shared__ int32_t tot_a[32], tot_b[32], carry[2];
  if (threadIdx.x == 0) carry[0] = carry[1] = 0;
  __syncthreads();
  for (int64_t base = 0; base < E; base += blockDim.x) {
    const int64_t e = base + threadIdx.x;
    const int32_t c = e < E ? count(e) : 0;
    int32_t start = c, slot = c > 0;
    block_scan2(start, slot, tot_a, tot_b);
    start += carry[0] - c;  // exclusive
    slot += carry[1] - (c > 0);
    if (c > 0) {
      g.active[slot] = int32_t(e);
      g.seg_start[slot] = start;
    }
    if (e < E) cursor(e, start);
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) carry[0] = start + c, carry[1] = slot + (c > 0);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    g.seg_start[carry[1]] = carry[0];
    *g.n_active = carry[1];
  }
}

// Pairs [p0, p1) into their places in g.order (and g.slot), in pair order within each expert
// (stable), from the experts' cursors counts[E] (advanced past them). A block-wide tile at a
// time: a pair's place is its expert's cursor plus the pairs of that expert in earlier warps of
// the tile (per-warp counts in before[warps][E], scanned over the warps) plus those in earlier
// lanes of its warp (__match_any_sync).
__device__ void fill_stable(const int32_t* experts, int64_t p0, int64_t p1, int64_t E,
                            int32_t* counts, int32_t* before, const Groups& g) {
  const int warps = int(blockDim.x) >> 5, warp = int(threadIdx.x) >> 5, lane = threadIdx.x & 31;
  for (int64_t base = p0; base < p1; base += blockDim.x) {
    for (int64_t i = threadIdx.x; i < warps * E; i += blockDim.x) before[i] = 0;
    __syncthreads();
    const int64_t p = base + threadIdx.x;
    const int32_t e = p < p1 ? experts[p] : -1;
    const unsigned same = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(same & ((1u << lane) - 1u));
    if (e >= 0 && rank == 0) before[warp * E + e] = __popc(same);
    __syncthreads();
    for (int64_t x = threadIdx.x; x < E; x += blockDim.x) {
      int32_t cursor = counts[x];
      for (int w = 0; w < warps; ++w) {
        const int32_t c = before[w * E + x];
        before[w * E + x] = cursor;
        cursor += c;
      }
      counts[x] = cursor;
    }
    __syncthreads();
    if (e >= 0) {
      const int32_t s = before[warp * E + e] + rank;
      g.order[s] = int32_t(p);
      g.slot[p] = s;
    }
    __syncthreads();  // `before` is read before the next tile clears it
  }
}

// Counts the pairs per expert, lays the used experts' segments out in expert order, then fills
// each segment in pair order (stable), all in one block. warp_counts = false (too little shared
// memory for the per-warp counts): one thread fills.
__global__ void group_kernel(const int32_t* experts, int64_t P, int64_t E, bool warp_counts,
                             Groups g) {
  pdl_begin();
  extern __shared__ int32_t counts[];  // [E], then (warp_counts) [warps][E]
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) atomicAdd(&counts[experts[p]], 1);
  __syncthreads();
  // Each count becomes its expert's fill cursor.
  lay_out_segments(
      E, [&](int64_t e) { return counts[e]; }, [&](int64_t e, int32_t start) { counts[e] = start; },
      g);
  __syncthreads();
  if (!warp_counts) {
    if (threadIdx.x != 0) return;
    for (int64_t p = 0; p < P; ++p) {
      const int32_t s = counts[experts[p]]++;
      g.order[s] = int32_t(p);
      g.slot[p] = s;
    }
    return;
  }
  fill_stable(experts, 0, P, E, counts, counts + E, g);
}

// group_kernel over group_blocks(P) blocks, the same outputs. 1: block b's pairs [b, b + 1) *
// kGroupChunk counted per expert into g.hist[b][E].
__global__ void group_count_kernel(const int32_t* experts, int64_t P, int64_t E, Groups g) {
  pdl_begin();
  extern __shared__ int32_t counts[];  // [E]
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int64_t p0 = int64_t(blockIdx.x) * kGroupChunk, p1 = std::min(P, p0 + kGroupChunk);
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) atomicAdd(&counts[experts[p]], 1);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) g.hist[blockIdx.x * E + e] = counts[e];
}

// 2 (one block): the segments from the experts' totals, and g.hist[b][e] becomes block b's first
// place for expert e (the expert's start plus its pairs in earlier blocks).
__global__ void group_layout_kernel(int64_t E, int64_t blocks, Groups g) {
  pdl_begin();
  lay_out_segments(
      E,
      [&](int64_t e) {
        int32_t c = 0;
        for (int64_t b = 0; b < blocks; ++b) c += g.hist[b * E + e];
        return c;
      },
      [&](int64_t e, int32_t start) {
        for (int64_t b = 0; b < blocks; ++b) {
          const int32_t c = g.hist[b * E + e];
          g.hist[b * E + e] = start;
          start += c;
        }
      },
      g);
}

// 3: block b's pairs into their places from its cursors.
__global__ void group_fill_kernel(const int32_t* experts, int64_t P, int64_t E, Groups g) {
  pdl_begin();
  extern __shared__ int32_t counts[];  // [E] cursors, then [warps][E]
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) counts[e] = g.hist[blockIdx.x * E + e];
  __syncthreads();
  const int64_t p0 = int64_t(blockIdx.x) * kGroupChunk, p1 = std::min(P, p0 + kGroupChunk);
  fill_stable(experts, p0, p1, E, counts, counts + E, g);
}

// Weight rows per lane group in the expert products: the gate and up rows of kPairs
// intermediate rows share each activation load (so do kDownRows rows of the down projection).
constexpr int kPairs = 2;
constexpr int kDownRows = 4;
constexpr int kThreads = 256;

// The grid covers an expert's rows in several rounds (as many blocks as fit at once): the first
// lane of each group asks the L2 for the rows it will read next round while it works on these.
__device__ __forceinline__ void prefetch_next_rows(const WeightMatrix& w, int64_t row,
                                                   int64_t count, int parts) {
  if (row >= w.rows || (int(threadIdx.x) & (parts - 1)) != 0) return;
  const int64_t row_bytes = w.cols * value_bytes_x2(w.type) / 2;
  const int64_t bytes = (row + count <= w.rows ? count : w.rows - row) * row_bytes;
  const char* p = static_cast<const char*>(w.data) + row * row_bytes;
  if ((reinterpret_cast<uintptr_t>(p) & 15) == 0 && bytes % 16 == 0)
    prefetch_l2(p, uint32_t(bytes));
}

// Gate/up rows r .. r + P - 1 of one expert for NT of its rows.
template <int NT, int P>
__device__ void up_rows(const WeightMatrix& w1, const WeightMatrix& w3, int64_t r,
                        const float* const (&xs)[NT], float limit, float* act, int64_t i0,
                        int64_t inter, int parts) {
  WeightMatrix ws[2 * P];
  int64_t rows[2 * P];
#pragma unroll
  for (int q = 0; q < P; ++q) {
    ws[2 * q] = w1, ws[2 * q + 1] = w3;
    rows[2 * q] = rows[2 * q + 1] = r + q < inter ? r + q : inter - 1;
  }
  float acc[2 * P][NT];
  rows_dot<NT, 2 * P>(ws, rows, xs, parts, acc);
  if ((int(threadIdx.x) & (parts - 1)) == 0)
#pragma unroll
    for (int q = 0; q < P; ++q)
      if (r + q < inter)
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          float gv = acc[2 * q][t], uv = acc[2 * q + 1][t];
          if (limit > 0) {
            gv = fminf(gv, limit);
            uv = fminf(fmaxf(uv, -limit), limit);
          }
          act[(i0 + t) * inter + r + q] = gv / (1.0f + expf(-gv)) * uv;
        }
}

template <int NT>
__device__ void up_chunk(const WeightMatrix& w1, const WeightMatrix& w3, int64_t r, const float* h,
                         int64_t hidden, int64_t k, const int32_t* order, int64_t i0, float limit,
                         float* act, int64_t inter, int parts) {
  const float* xs[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) xs[t] = h + int64_t(order[i0 + t] / k) * hidden;
  if constexpr (NT <= 2) {
    up_rows<NT, kPairs>(w1, w3, r, xs, limit, act, i0, inter, parts);
  } else {
#pragma unroll
    for (int q = 0; q < kPairs; ++q)
      up_rows<NT, 1>(w1, w3, r + q, xs, limit, act, i0, inter, parts);
  }
}

// MaxNT: the most rows of one expert fed to one pass over its weights (more rows need more
// registers; single-row decode wants the fewest). Each group of `parts` lanes owns kPairs
// intermediate rows of the expert blockIdx.y.
template <int MaxNT>
__global__ void __launch_bounds__(kThreads, MaxNT <= 2 ? 2 : 1)
    up_kernel(ExpertsDevice e, Groups g, const float* h, int64_t hidden, int64_t k, int64_t inter,
              float limit, int parts) {
  pdl_begin();
  const int64_t a = blockIdx.y;
  if (a >= *g.n_active) return;
  const int32_t ex = g.active[a];
  const WeightMatrix w1 = e.w1[ex], w3 = e.w3[ex];
  const int64_t s1 = g.seg_start[a + 1];
  const int64_t rows_per_block = kThreads / parts * kPairs;
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_block; r0 < inter;
       r0 += int64_t(gridDim.x) * rows_per_block) {
    const int64_t r = r0 + int64_t(threadIdx.x) / parts * kPairs;
    if (r >= inter) return;  // whole groups leave together
    prefetch_next_rows(w1, r + int64_t(gridDim.x) * rows_per_block, kPairs, parts);
    prefetch_next_rows(w3, r + int64_t(gridDim.x) * rows_per_block, kPairs, parts);
    for (int64_t i = g.seg_start[a]; i < s1;) {
      const int64_t left = s1 - i;
      if (MaxNT >= 8 && left >= 8) {
        up_chunk<8>(w1, w3, r, h, hidden, k, g.order, i, limit, g.act, inter, parts);
        i += 8;
      } else if (MaxNT >= 4 && left >= 4) {
        up_chunk<4>(w1, w3, r, h, hidden, k, g.order, i, limit, g.act, inter, parts);
        i += 4;
      } else if (MaxNT >= 2 && left >= 2) {
        up_chunk<2>(w1, w3, r, h, hidden, k, g.order, i, limit, g.act, inter, parts);
        i += 2;
      } else {
        up_chunk<1>(w1, w3, r, h, hidden, k, g.order, i, limit, g.act, inter, parts);
        i += 1;
      }
    }
  }
}

template <int NT, int R>
__device__ void down_rows(const WeightMatrix& w2, int64_t r, const float* const (&xs)[NT],
                          const Groups& g, const float* weights, int64_t i0, int64_t hidden,
                          int parts) {
  WeightMatrix ws[R];
  int64_t rows[R];
#pragma unroll
  for (int q = 0; q < R; ++q) ws[q] = w2, rows[q] = r + q < hidden ? r + q : hidden - 1;
  float y[R][NT];
  rows_dot<NT, R>(ws, rows, xs, parts, y);
  if ((int(threadIdx.x) & (parts - 1)) == 0)
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (r + q < hidden)
#pragma unroll
        for (int t = 0; t < NT; ++t)
          g.pair_out[(i0 + t) * hidden + r + q] = weights[g.order[i0 + t]] * y[q][t];
}

template <int NT>
__device__ void down_chunk(const WeightMatrix& w2, int64_t r, const Groups& g, const float* weights,
                           int64_t i0, int64_t inter, int64_t hidden, int parts) {
  const float* xs[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) xs[t] = g.act + (i0 + t) * inter;
  if constexpr (NT <= 2) {
    down_rows<NT, kDownRows>(w2, r, xs, g, weights, i0, hidden, parts);
  } else {
#pragma unroll
    for (int q = 0; q < kDownRows; ++q)
      down_rows<NT, 1>(w2, r + q, xs, g, weights, i0, hidden, parts);
  }
}

template <int MaxNT>
__global__ void __launch_bounds__(kThreads, MaxNT <= 2 ? 2 : 1)
    down_kernel(ExpertsDevice e, Groups g, const float* weights, int64_t hidden, int64_t inter,
                int parts) {
  pdl_begin();
  const int64_t a = blockIdx.y;
  if (a >= *g.n_active) return;
  const WeightMatrix w2 = e.w2[g.active[a]];
  const int64_t s1 = g.seg_start[a + 1];
  const int64_t rows_per_block = kThreads / parts * kDownRows;
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_block; r0 < hidden;
       r0 += int64_t(gridDim.x) * rows_per_block) {
    const int64_t r = r0 + int64_t(threadIdx.x) / parts * kDownRows;
    if (r >= hidden) return;
    prefetch_next_rows(w2, r + int64_t(gridDim.x) * rows_per_block, kDownRows, parts);
    for (int64_t i = g.seg_start[a]; i < s1;) {
      const int64_t left = s1 - i;
      if (MaxNT >= 8 && left >= 8) {
        down_chunk<8>(w2, r, g, weights, i, inter, hidden, parts);
        i += 8;
      } else if (MaxNT >= 4 && left >= 4) {
        down_chunk<4>(w2, r, g, weights, i, inter, hidden, parts);
        i += 4;
      } else if (MaxNT >= 2 && left >= 2) {
        down_chunk<2>(w2, r, g, weights, i, inter, hidden, parts);
        i += 2;
      } else {
        down_chunk<1>(w2, r, g, weights, i, inter, hidden, parts);
        i += 1;
      }
    }
  }
}

// out[t] += the k pair outputs of row t, added in j order. Rows by blocks, 4 columns a thread
// where rows are 16-byte aligned (kVec4); before, one thread an element paid a 64-bit division
// and remainder per element.
template <bool kVec4>
__global__ void combine_kernel(Groups g, int64_t n, int64_t k, int64_t hidden, float* out) {
  pdl_begin();
  for (int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    float* o = out + t * hidden;
    if constexpr (kVec4) {
      for (int64_t c = threadIdx.x; c < hidden / 4; c += blockDim.x) {
        float4 v = reinterpret_cast<const float4*>(o)[c];
        for (int64_t j = 0; j < k; ++j) {
          const float4 p =
              reinterpret_cast<const float4*>(g.pair_out + int64_t(g.slot[t * k + j]) * hidden)[c];
          v.x += p.x, v.y += p.y, v.z += p.z, v.w += p.w;
        }
        reinterpret_cast<float4*>(o)[c] = v;
      }
    } else {
      for (int64_t d = threadIdx.x; d < hidden; d += blockDim.x) {
        float v = o[d];
        for (int64_t j = 0; j < k; ++j) v += g.pair_out[int64_t(g.slot[t * k + j]) * hidden + d];
        o[d] = v;
      }
    }
  }
}

// combine_kernel of pair rows stored as bf16 (ExpertGemm::set_pair_out_bf16; hidden a multiple
// of 4, rows 8-byte aligned): the same sums in the same order of the rows' bf16 values.
__global__ void combine_bf16_kernel(Groups g, int64_t n, int64_t k, int64_t hidden, float* out) {
  pdl_begin();
  const auto* pairs = reinterpret_cast<const __nv_bfloat16*>(g.pair_out);
  for (int64_t t = blockIdx.x; t < n; t += gridDim.x) {
    float* o = out + t * hidden;
    for (int64_t c = threadIdx.x; c < hidden / 4; c += blockDim.x) {
      float4 v = reinterpret_cast<const float4*>(o)[c];
      for (int64_t j = 0; j < k; ++j) {
        const float4 p = bf16x4_as_float4(
            reinterpret_cast<const uint2*>(pairs + int64_t(g.slot[t * k + j]) * hidden)[c]);
        v.x += p.x, v.y += p.y, v.z += p.z, v.w += p.w;
      }
      reinterpret_cast<float4*>(o)[c] = v;
    }
  }
}

// The pairs grouped by expert into g (order, slot, active, seg_start, n_active); one_block:
// group_kernel alone whatever the count (a test's reference).
void group_pairs(const int32_t* chosen, int64_t P, int64_t experts, const Groups& g,
                 cudaStream_t stream, bool one_block = false) {
  const unsigned threads = unsigned(std::clamp<int64_t>((experts + 31) / 32 * 32, 32, 1024));
  const size_t fill_shared = size_t(threads / 32 + 1) * size_t(experts) * 4;
  const bool warp_counts = fill_shared <= 48 * 1024;
  const int64_t blocks = group_blocks(P);
  if (warp_counts && blocks >= 2 && !one_block) {
    launch_pdl(group_count_kernel, unsigned(blocks), threads, size_t(experts) * 4, stream, chosen,
               P, experts, g);
    launch_pdl(group_layout_kernel, 1, threads, 0, stream, experts, blocks, g);
    launch_pdl(group_fill_kernel, unsigned(blocks), threads, fill_shared, stream, chosen, P,
               experts, g);
  } else {
    launch_pdl(group_kernel, 1, threads, warp_counts ? fill_shared : size_t(experts) * 4, stream,
               chosen, P, experts, warp_counts, g);
  }
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void route_rows(const float* logits, const int32_t* tokens, const int32_t* tid2eid,
                const float* bias, int64_t n, int64_t experts, int64_t k, ScoreFunc score,
                float routed_scaling, int32_t* chosen, float* weights, cudaStream_t stream) {
  if (n <= 0) return;
  if (k < 1 || k > 32 || k > experts)
    throw std::invalid_argument("cuda routing: " + std::to_string(k) + " experts a token of " +
                                std::to_string(experts) + " (one warp chooses: at most 32)");
  launch_pdl(route_kernel, unsigned(n), 256, size_t(2 * experts) * 4, stream, logits, tokens,
             tid2eid, bias, experts, k, score, routed_scaling, chosen, weights);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

// Rows at most that many take the streamed kernels of one row, each row on its own.
constexpr int64_t kStreamedRows = 64;

void group_expert_pairs(const int32_t* chosen, int64_t P, int64_t experts, int32_t* order,
                        int32_t* slot, int32_t* active, int32_t* seg_start, int32_t* n_active,
                        int32_t* hist, bool one_block, cudaStream_t stream) {
  Groups g{};
  g.order = order;
  g.slot = slot;
  g.active = active;
  g.seg_start = seg_start;
  g.n_active = n_active;
  g.hist = hist;
  group_pairs(chosen, P, experts, g, stream, one_block);
}

int64_t group_expert_pairs_hist_ints(int64_t P, int64_t experts) {
  return group_blocks(P) * experts;
}

int64_t moe_scratch_bytes(int64_t n, int64_t k, int64_t experts, int64_t inter, int64_t hidden) {
  const int64_t P = n * k;
  return int64_t(align16(P * 4) * 2 + align16(experts * 4) + align16((experts + 1) * 4) + 16 +
                 align16(group_blocks(P) * experts * 4) + align16(P * inter * 4) +
                 align16(P * hidden * 4));
}

namespace {

// The expert products on the CUDA cores: each used expert's stored weights streamed once per
// few of its rows.
void products(const ExpertsDevice& e, const Groups& g, const float* h, const float* weights,
              int64_t n, int64_t k, int64_t experts, int64_t inter, int64_t hidden, float limit,
              cudaStream_t stream) {
  const int64_t P = n * k;
  const unsigned max_active = unsigned(std::min(experts, P));
  // Every expert of a model shares its type and widths.
  const int up_parts = rows_dot_parts(e.w1_type, hidden),
            down_parts = rows_dot_parts(e.w2_type, inter);
  const int64_t up_groups = (inter + kPairs - 1) / kPairs,
                down_groups = (hidden + kDownRows - 1) / kDownRows;
  // At most the blocks that are resident at once (2 per SM) in x: each then loops over its rows
  // with the next round's rows prefetched, instead of later waves starting cold.
  const int sms = sm_count();
  // Only for one row, where every one of the max_active experts is used; with more rows most of
  // the max_active blocks in y find no expert and leave.
  const int64_t resident_x =
      n == 1 ? std::max<int64_t>(1, 2 * int64_t(sms) / int64_t(max_active)) : INT64_MAX;
  auto blocks_x = [&](int64_t groups, int parts) {
    return unsigned(std::min((groups * parts + kThreads - 1) / kThreads, resident_x));
  };
  const dim3 up_grid(blocks_x(up_groups, up_parts), max_active),
      down_grid(blocks_x(down_groups, down_parts), max_active);
  if (n == 1) {  // one row: every expert sees it at most once
    launch_pdl(up_kernel<1>, up_grid, kThreads, 0, stream, e, g, h, hidden, k, inter, limit,
               up_parts);
    launch_pdl(down_kernel<1>, down_grid, kThreads, 0, stream, e, g, weights, hidden, inter,
               down_parts);
  } else if (n <= 64) {  // batched decode: a few rows per expert
    launch_pdl(up_kernel<2>, up_grid, kThreads, 0, stream, e, g, h, hidden, k, inter, limit,
               up_parts);
    launch_pdl(down_kernel<2>, down_grid, kThreads, 0, stream, e, g, weights, hidden, inter,
               down_parts);
  } else {
    launch_pdl(up_kernel<8>, up_grid, kThreads, 0, stream, e, g, h, hidden, k, inter, limit,
               up_parts);
    launch_pdl(down_kernel<8>, down_grid, kThreads, 0, stream, e, g, weights, hidden, inter,
               down_parts);
  }
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void routed_experts(const ExpertsDevice& e, const int32_t* chosen, const float* weights,
                    const float* h, int64_t n, int64_t k, int64_t experts, int64_t inter,
                    int64_t hidden, float limit, void* scratch, float* out, cudaStream_t stream,
                    ExpertGemm* gemm, cudaEvent_t before_sum, int max_blocks,
                    int64_t in_flight_bytes, bool store, bool early_down) {
  if (n <= 0) return;
  const int64_t P = n * k;
  const Groups g = carve(scratch, P, experts, inter);
  // Decode (up to kStreamedRows rows): every row's experts streamed on their own (one launch of
  // each kernel for the batch). An
  // expert two rows share is read twice, but streamed it reads several times faster than the
  // grouped CUDA-core kernels below read it once.
  if (n <= kStreamedRows &&
      streamed_experts(e, chosen, weights, h, n, k, inter, hidden, limit, g.act, out, stream,
                       before_sum, max_blocks, in_flight_bytes, store, early_down))
    return;
  // The grouped path adds into `out`: as its own, it starts at zero.
  if (store) {
    AGENTRT_CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(n * hidden) * sizeof(float), stream));
    before_sum = nullptr;
  }
  group_pairs(chosen, P, experts, g, stream);
  bool pairs_bf16 = false;  // the pair rows as bf16 (ExpertGemm::set_pair_out_bf16)
  if (gemm && gemm->applies(e, n, inter, hidden, stream))
    pairs_bf16 = gemm->run(e, {g.order, g.active, g.seg_start, g.n_active, experts}, h, weights, k,
                           inter, hidden, limit, g.pair_out, stream);
  else
    products(e, g, h, weights, n, k, experts, inter, hidden, limit, stream);
  if (before_sum) AGENTRT_CUDA_CHECK(cudaStreamWaitEvent(stream, before_sum, 0));
  const bool vec4 = hidden % 4 == 0 && (reinterpret_cast<uintptr_t>(out) & 15) == 0 &&
                    (reinterpret_cast<uintptr_t>(g.pair_out) & 15) == 0;
  if (pairs_bf16 && !vec4)
    throw std::logic_error("routed experts: bf16 pair rows of " + std::to_string(hidden) +
                           " columns need a multiple of 4 and 16-byte aligned rows");
  launch_pdl(
      pairs_bf16 ? combine_bf16_kernel : (vec4 ? combine_kernel<true> : combine_kernel<false>),
      unsigned(std::min<int64_t>(n, 1 << 20)), 256, 0, stream, g, n, k, hidden, out);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

void route_and_run_experts(const RouteInputs& route, int32_t* chosen, float* weights,
                           const ExpertsDevice& e, const float* h, int64_t n, int64_t k,
                           int64_t experts, int64_t inter, int64_t hidden, float limit,
                           void* scratch, float* out, cudaStream_t stream, ExpertGemm* gemm,
                           cudaEvent_t before_sum, int64_t in_flight_bytes) {
  if (n <= 0) return;
  if (n <= kStreamedRows &&
      streamed_experts_routed(route, experts, chosen, weights, e, h, n, k, inter, hidden, limit,
                              carve(scratch, n * k, experts, inter).act, out, stream, before_sum, 0,
                              in_flight_bytes))
    return;
  route_rows(route.logits, route.tokens, route.tid2eid, route.bias, n, experts, k, route.func,
             route.scaling, chosen, weights, stream);
  routed_experts(e, chosen, weights, h, n, k, experts, inter, hidden, limit, scratch, out, stream,
                 gemm, before_sum, 0, in_flight_bytes);
}

bool experts_with_shared_fit(const ExpertsDevice& e, const SharedExpertDevice& shared, int64_t n,
                             int64_t k, int64_t inter, int64_t hidden) {
  return n > 0 && n <= kStreamedRows && streamed_experts_fit(e, k, inter, hidden) &&
         streamed_shared_fits(shared, hidden);
}

bool experts_with_shared(const RouteInputs& route, bool fused, int32_t* chosen, float* weights,
                         const ExpertsDevice& e, const SharedExpertDevice& shared, const float* h,
                         int64_t n, int64_t k, int64_t experts, int64_t inter, int64_t hidden,
                         float limit, void* scratch, float* out, cudaStream_t stream,
                         cudaEvent_t before_down, int64_t in_flight_bytes, bool early_down) {
  if (!experts_with_shared_fit(e, shared, n, k, inter, hidden)) return false;
  float* act = carve(scratch, n * k, experts, inter).act;
  if (fused &&
      streamed_experts_routed(route, experts, chosen, weights, e, h, n, k, inter, hidden, limit,
                              act, out, stream, before_down, 0, in_flight_bytes, &shared))
    return true;
  route_rows(route.logits, route.tokens, route.tid2eid, route.bias, n, experts, k, route.func,
             route.scaling, chosen, weights, stream);
  if (!streamed_experts(e, chosen, weights, h, n, k, inter, hidden, limit, act, out, stream,
                        before_down, 0, in_flight_bytes, true, early_down, &shared))
    throw std::logic_error("cuda experts_with_shared: the streamed kernels refused rows they fit");
  return true;
}

}  // namespace agentrt::engine::cuda
