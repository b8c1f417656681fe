// grouped_fp8_gemm.h's kernel. A persistent block of three warpgroups per SM walks its tiles'
// 128-deep steps through a ring of four shared-memory stages:
//  - warpgroup 0 (producer) copies a step's activation rows (e4m3, 128-byte swizzled rows, the
//    layout wgmma reads), the weight block's FP4 bytes and ue8m0 codes and the rows' scales with
//    cp.async, two steps ahead; then, for the step two back, reduces the block's largest code and
//    turns each FP4 row into e4m3 rows of the same swizzle (a byte permutation per 4 values from
//    an 8-entry table of the scaled e2m1 magnitudes), and marks the stage full;
//  - warpgroups 1 and 2 (consumers) each multiply 64 of the tile's rows by the block (four
//    wgmma m64n128k32), then add the product into their accumulators times the row's scale and
//    the block's, and give the stage back.
// The conversion and the copies so run beside the tensor cores' work on the stage before.
#include <cuda_fp8.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cuda/bulk_copy.cuh"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp4_e4m3.h"
#include "engine/cuda/grouped_fp8_gemm.h"
#include "engine/cuda/segment_search.cuh"

namespace agentrt::engine::cuda {
namespace {

// The compute_90 (PTX) pass has no wgmma: the kernel is a trap there, its helpers left out.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AGENTRT_NO_WGMMA 1
#endif

namespace fe = fp4_e4m3;
using grouped_fp8::kDepth;
using grouped_fp8::kTileCols;
using grouped_fp8::kTileRows;

constexpr int kStages = 4;
constexpr int kThreads = 384;  // warpgroup 0 produces, 1 and 2 consume
// Byte offsets within a stage; a and b start on 1024-byte boundaries (the swizzle's period).
constexpr int kStageA = 0;
constexpr int kStageB = kStageA + kTileRows * kDepth;
constexpr int kRawRow = 80;  // bytes a stored FP4 row takes in a stage (64, padded: no bank
                             // conflicts when each thread reads its own row)
constexpr int kStageRaw = kStageB + kTileCols * kDepth;
constexpr int kStageCodes = kStageRaw + kTileCols * kRawRow;
constexpr int kStageAScale = kStageCodes + kTileCols * 4;
constexpr int kStageBScale = kStageAScale + kTileRows * 4;
constexpr int kStageBytes = (kStageBScale + 16 + 1023) / 1024 * 1024;
constexpr int kSharedBytes = kStages * kStageBytes + 1024;  // + room to align the base

#ifndef AGENTRT_NO_WGMMA
constexpr int kLead = 2;        // the producer's copies run this many steps ahead of its conversion
constexpr int kZeroShift = 28;  // table entries 0..27: shifts 6 .. -21; 28: zeros; 29: NaNs
constexpr int kNanEntry = 29;
constexpr int kTable = 30;

// A 128-byte row's 16-byte chunk c in the 128-byte swizzle (TMA's SWIZZLE_128B, wgmma's layout
// 1): chunk c of row r sits at chunk c ^ (r % 8).
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}

// cp.async of 16 bytes, zero-filled (nothing read) where !valid.
__device__ __forceinline__ void copy_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)),
               "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void copy_4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(dst)), "l"(src)
               : "memory");
}
__device__ __forceinline__ void copies_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void copies_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// The producer warpgroup's own barrier (barrier 0 is __syncthreads).
__device__ __forceinline__ void producer_sync() {
  asm volatile("bar.sync 1, 128;\n" ::: "memory");
}

// Eight FP4 values (a 32-bit word, value j in nibble j) as eight e4m3 bytes: each nibble's
// magnitude (its low 3 bits) picks a byte of the table (the block's scaled e2m1 magnitudes), its
// sign bit picks 0x80 or 0.
__device__ __forceinline__ uint2 fp4_to_e4m3(uint32_t w, uint2 table) {
  const uint32_t m0 = __byte_perm(table.x, table.y, w & 0x7777u),
                 m1 = __byte_perm(table.x, table.y, (w >> 16) & 0x7777u),
                 s0 = __byte_perm(0u, 0x80808080u, (w >> 1) & 0x4444u),
                 s1 = __byte_perm(0u, 0x80808080u, (w >> 17) & 0x4444u);
  return make_uint2(m0 | s0, m1 | s1);
}

// A K-major operand of 128-byte rows in the 128-byte swizzle: 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t operand(const void* p) {
  const uint64_t a = shared_address(p);
  return ((a & 0x3ffff) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

// d (+)= A (64 x 32 e4m3) B^T (128 x 32 e4m3), d the warpgroup's 64 x 128 float32 fragment.
__device__ __forceinline__ void wgmma_64x128x32(float* d, uint64_t a, uint64_t b, bool add) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, "
      "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, "
      "%55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
        "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),
        "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
        "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
        "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]),
        "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(int(add)));
}

// Where tile t lies: expert a (local index), its first padded row and row count, the tile's
// first row within them and first output column.
struct Tile {
  int64_t a, first, rows, m0, n0;
};
__device__ __forceinline__ Tile tile_at(const GroupedExpertProduct& p, int64_t t) {
  Tile x;
  x.a = segment_of(p.tile_start, 0, p.used, int32_t(t));
  x.first = p.pad[x.a];
  x.rows = p.pad[x.a + 1] - x.first;
  const int64_t row_tiles = (x.rows + kTileRows - 1) / kTileRows, local = t - p.tile_start[x.a];
  x.n0 = local / row_tiles * kTileCols;
  x.m0 = local % row_tiles * kTileRows;
  return x;
}

// The tile's 128 weight rows: their FP4 bytes and their ue8m0 codes.
struct TileWeight {
  const uint8_t* data;
  const uint8_t* codes;
};
__device__ __forceinline__ TileWeight weight_of(const GroupedExpertProduct& p, const Tile& t) {
  const int32_t ex = p.active[t.a];
  int64_t r0 = t.n0;
  const WeightMatrix* w = p.down ? &p.experts.w2[ex] : &p.experts.w1[ex];
  if (!p.down && r0 >= p.n / 2) {
    w = &p.experts.w3[ex];
    r0 -= p.n / 2;
  }
  const auto* data = static_cast<const uint8_t*>(w->data);
  const auto* codes = static_cast<const uint8_t*>(w->scale);
  return {data + r0 * (p.k / 2), codes + (w->row_offset + r0) * (p.k / fe::kScaleColumns)};
}
#endif  // AGENTRT_NO_WGMMA

__global__ void __launch_bounds__(kThreads, 1)
    grouped_expert_kernel(const __grid_constant__ GroupedExpertProduct p) {
#ifndef AGENTRT_NO_WGMMA
  extern __shared__ uint8_t shared_raw[];
  __shared__ uint64_t full[kStages], empty[kStages];
  __shared__ uint2 table[kTable];
  __shared__ int warp_max[8];
  uint8_t* stages = shared_raw + ((1024 - (shared_address(shared_raw) & 1023)) & 1023);
  const int tid = int(threadIdx.x), wg = tid / 128, lane = tid % 32, warp = (tid % 128) / 32;
  const int64_t depth_steps = p.k / kDepth;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 128);  // every producer thread
      mbarrier_init(&empty[s], 8);   // one lane of every consumer warp
    }
    mbarrier_init_fence();
  }
  if (tid < kTable) {
    // The e4m3 bytes of the 8 e2m1 magnitudes times 2^(6 - tid) (fp4_e4m3.h's code_factor for a
    // code tid below the block's largest), zeros past 2^-21, NaNs for NaN codes.
    uint32_t bytes[2] = {0, 0};
    for (int m = 0; m < 8; ++m) {
      const float v = tid < kZeroShift    ? fe::e2m1_value(uint32_t(m)) * fe::exp2_any(6 - tid)
                      : tid == kZeroShift ? 0.0f
                                          : __uint_as_float(0x7fc00000u);
      const uint32_t b = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
      bytes[m / 4] |= b << (8 * (m % 4));
    }
    table[tid] = make_uint2(bytes[0], bytes[1]);
  }
  __syncthreads();

  if (wg == 0) {
    // Producer. Step j of this block (its tiles' depth steps in turn) lives in stage j % kStages.
    auto issue = [&](int64_t j, const Tile& t, const TileWeight& w, int64_t kb) {
      const int s = int(j % kStages);
      if (j >= kStages) mbarrier_wait(&empty[s], uint32_t((j / kStages - 1) & 1));
      uint8_t* st = stages + s * kStageBytes;
      const int c = tid % 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = tid / 8 + 16 * i;
        const bool valid = t.m0 + r < t.rows;
        copy_16(st + kStageA + swizzled(r, c),
                p.x + (t.first + (valid ? t.m0 + r : 0)) * p.k + kb * kDepth + c * 16, valid);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = tid / 4 + 32 * i, q = tid % 4;
        copy_16(st + kStageRaw + r * kRawRow + q * 16,
                w.data + r * (p.k / 2) + kb * (kDepth / 2) + q * 16, true);
      }
      copy_4(st + kStageCodes + 4 * tid,
             w.codes + tid * (p.k / fe::kScaleColumns) + kb * (kDepth / fe::kScaleColumns));
      if (tid < kTileRows / 4) {
        const bool valid = t.m0 + 4 * tid < t.rows;  // rows come in 16s
        copy_16(st + kStageAScale + 16 * tid,
                p.x_scales + t.first * depth_steps + kb * t.rows + (valid ? t.m0 + 4 * tid : 0),
                valid);
      }
      copies_commit();
    };
    auto convert = [&](int64_t j) {
      const int s = int(j % kStages);
      uint8_t* st = stages + s * kStageBytes;
      producer_sync();  // every producer's copies of step j have landed
      const uint32_t codes = *reinterpret_cast<const uint32_t*>(st + kStageCodes + 4 * tid);
      int emax = fe::kNoCode;
#pragma unroll
      for (int i = 0; i < 4; ++i) emax = fe::max_finite_code(emax, uint8_t(codes >> (8 * i)));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) emax = max(emax, __shfl_xor_sync(0xffffffffu, emax, o));
      int* maxes = warp_max + 4 * (j & 1);  // alternate halves: no barrier between reuses
      if (lane == 0) maxes[warp] = emax;
      producer_sync();
      emax = max(max(maxes[0], maxes[1]), max(maxes[2], maxes[3]));
      if (tid == 0) *reinterpret_cast<float*>(st + kStageBScale) = fe::block_scale(emax);
      const uint8_t* raw = st + kStageRaw + tid * kRawRow;
      uint8_t* row = st + kStageB;
#pragma unroll
      for (int q = 0; q < 4; ++q) {  // 32 values under one code
        const uint4 v = *reinterpret_cast<const uint4*>(raw + 16 * q);
        const uint8_t code = uint8_t(codes >> (8 * q));
        const uint2 tab =
            table[code == fe::kNanCode ? kNanEntry : min(emax - int(code), kZeroShift)];
        const uint2 a = fp4_to_e4m3(v.x, tab), b = fp4_to_e4m3(v.y, tab),
                    c = fp4_to_e4m3(v.z, tab), d = fp4_to_e4m3(v.w, tab);
        *reinterpret_cast<uint4*>(row + swizzled(tid, 2 * q)) = make_uint4(a.x, a.y, b.x, b.y);
        *reinterpret_cast<uint4*>(row + swizzled(tid, 2 * q + 1)) = make_uint4(c.x, c.y, d.x, d.y);
      }
      // The tensor cores read the stage through the async proxy.
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      mbarrier_arrive(&full[s]);
    };
    int64_t j = 0;
    for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
      const Tile tile = tile_at(p, t);
      const TileWeight w = weight_of(p, tile);
      for (int64_t kb = 0; kb < depth_steps; ++kb, ++j) {
        issue(j, tile, w, kb);
        if (j >= kLead) {
          copies_wait<kLead>();  // this thread's copies of step j - kLead are in
          convert(j - kLead);
        }
      }
    }
    copies_wait<0>();
    for (int64_t i = std::max<int64_t>(0, j - kLead); i < j; ++i) convert(i);
  } else {
    // Consumers: warpgroup wg takes the tile's rows 64 (wg - 1) .. 64 wg - 1.
    const int half = wg - 1;
    float acc[64], part[64];
    int64_t j = 0;
    for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
      const Tile tile = tile_at(p, t);
      const bool busy = tile.m0 + 64 * half < tile.rows;  // warpgroup-uniform
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
      for (int64_t kb = 0; kb < depth_steps; ++kb, ++j) {
        const int s = int(j % kStages);
        mbarrier_wait(&full[s], uint32_t((j / kStages) & 1));
        const uint8_t* st = stages + s * kStageBytes;
        const float* a_scale = reinterpret_cast<const float*>(st + kStageAScale);
        const float b_scale = *reinterpret_cast<const float*>(st + kStageBScale);
        const int r = 64 * half + 16 * warp + lane / 4;
        const float f0 = a_scale[r] * b_scale, f1 = a_scale[r + 8] * b_scale;
        if (busy) {
          asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
          for (int kk = 0; kk < kDepth / 32; ++kk)
            wgmma_64x128x32(part, operand(st + kStageA + 64 * half * 128 + 32 * kk),
                            operand(st + kStageB + 32 * kk), kk > 0);
          asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
          asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
          // Keeps the compiler from reading the products before the wait.
#pragma unroll
          for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(part[i])::"memory");
        }
        __syncwarp();
        if (lane == 0) mbarrier_arrive(&empty[s]);
        if (busy) {
#pragma unroll
          for (int i = 0; i < 64; ++i) acc[i] = fmaf(part[i], (i & 2) ? f1 : f0, acc[i]);
        }
      }
      if (!busy) continue;
      // The fragment: element i of the thread is row 16 warp + lane / 4 + 8 ((i / 2) % 2), column
      // 8 (i / 4) + 2 (lane % 4) + i % 2 of the warpgroup's 64 x 128.
      const int64_t r0 = tile.m0 + 64 * half + 16 * warp + lane / 4, r1 = r0 + 8;
      float* out0 = p.out + (tile.first + r0) * p.ld_out + tile.n0 + 2 * (lane % 4);
      float* out1 = out0 + 8 * p.ld_out;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        if (r0 < tile.rows)
          *reinterpret_cast<float2*>(out0 + 8 * i) = make_float2(acc[4 * i], acc[4 * i + 1]);
        if (r1 < tile.rows)
          *reinterpret_cast<float2*>(out1 + 8 * i) = make_float2(acc[4 * i + 2], acc[4 * i + 3]);
      }
    }
  }
#else
  __trap();  // built without sm_90a: grouped_expert_product_runs() keeps the host from here
#endif
}

}  // namespace

int64_t grouped_expert_tiles(const int32_t* pad, int64_t used, int64_t n, int32_t* starts) {
  starts[0] = 0;
  for (int64_t a = 0; a < used; ++a) {
    const int64_t rows = pad[a + 1] - pad[a];
    starts[a + 1] =
        starts[a] + int32_t((rows + kTileRows - 1) / kTileRows * (n / kTileCols));
  }
  return starts[used];
}

bool grouped_expert_product_runs(int device) {
  int major = 0, minor = 0;
  AGENTRT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  AGENTRT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;
}

bool grouped_expert_product_fits(int64_t n, int64_t k) {
  return n > 0 && k > 0 && n % kTileCols == 0 && k % kDepth == 0;
}

void grouped_expert_product(const GroupedExpertProduct& p, int blocks, cudaStream_t stream) {
  if (!grouped_expert_product_fits(p.n, p.k) || (!p.down && p.n % (2 * kTileCols) != 0))
    throw std::invalid_argument("grouped_expert_product: n " + std::to_string(p.n) + " and k " +
                                std::to_string(p.k) + " must be multiples of 128" +
                                (p.down ? "" : " (n of 256: gate and up stacked)"));
  if (p.tiles <= 0) return;
  AGENTRT_CUDA_CHECK(cudaFuncSetAttribute(
      grouped_expert_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  const int grid = int(std::min<int64_t>(std::max(blocks, 1), p.tiles));
  grouped_expert_kernel<<<grid, kThreads, kSharedBytes, stream>>>(p);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace agentrt::engine::cuda
