// How the one-row FP8 tensor-core products (gemv_stream.cu, gemv_warp_rows.cu) feed
// mma.m16n8k16 in f16, as host-callable functions so that a test without a GPU
// (CudaF16Fragments.*) can replay them.
//
// Weights: Hopper turns two FP8 e4m3 bytes into an f16 pair in one instruction, exactly (every
// e4m3 value is an f16); bf16 pairs took three to five integer instructions each, which were most
// of the products' inner loop. A lane's 32-bit word of a weight row holds four consecutive
// columns c .. c + 3: its low half (c, c + 1) feeds the mma's k slots 2t, 2t + 1 and its high half
// (c + 2, c + 3) the slots 2t + 8, 2t + 9, so b0 = (x[c], x[c + 1]) and b1 = (x[c + 2], x[c + 3]).
//
// Activations: f16 has 5 exponent bits, so each 128-column block of an activation row (one FP8
// scale block) is scaled by a power of two that puts its largest magnitude in [2^14, 2^15), then
// split into f16 high and low parts (about 22 significant bits together; bf16 parts carried 16).
// The block's sums are scaled back with the weights' block scale; powers of two are exact.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/float_bits.h"

namespace agentrt::engine::cuda::f16_fragments {

constexpr int64_t kBlockCols = 128;  // columns sharing one activation scale (an FP8 scale block)

// The column, within a k-step's 16, under mma k slot kk (0..15): lane position t = (kk % 8) / 2
// holds columns 4t .. 4t + 3 in one 32-bit word.
__host__ __device__ inline int k_column(int kk) {
  return 4 * ((kk % 8) / 2) + (kk & 1) + (kk >= 8 ? 2 : 0);
}

using cuda::float_bits;
using cuda::power_of_two;  // 2^e, exactly (float_bits.h)

// The exponent e of a block whose largest magnitude is amax: amax * 2^e in [2^14, 2^15) (so its
// f16 high part stays below 65,504 and its low part is a normal f16 above 2^-14 for the block's
// larger values). 0 where amax is not finite (the products are then not finite either); 126 for
// zero and magnitudes below 2^-112 (what they lose is below 2^-126 of nothing larger).
__host__ __device__ inline int block_exponent(float amax) {
  const int biased = int((float_bits(amax) >> 23) & 0xff);
  if (biased == 0xff) return 0;
  const int e = 141 - biased;  // amax in [2^(biased - 127), 2^(biased - 126))
  return e > 126 ? 126 : e;
}

// gemv_stream_mma_kernel's staged activations (nt rows a launch): the index of the uint2 (b0, b1)
// of 16-column step s, activation row j, part p (0: high, 1: low) and lane position t. The
// kernel's mma jb reads B column n = 8 jb + g (lane g = lane / 4) from row n / 2, part n % 2.
__host__ __device__ inline int64_t stream_x_pair(int64_t s, int j, int p, int t, int nt) {
  return ((s * nt + j) * 2 + p) * 4 + t;
}

}  // namespace agentrt::engine::cuda::f16_fragments
