// Every used routed expert's rows times its MXFP4 weights in one launch, on the Hopper tensor
// cores' FP8 path (wgmma): GemmPrecision::fp8's routed experts of prefill passes (moe_fp8.cu,
// ExpertGemm with fp8_grouped). The weights are read as stored: a producer warpgroup copies each
// 128 x 128 block's FP4 bytes and ue8m0 codes into shared memory and turns them into e4m3 there
// (fp4_e4m3.h's block scale, the same values the chunked path's conversion writes to global
// memory), while two consumer warpgroups multiply the stage before with the activations' e4m3
// rows and add each 128-deep block's product into float32 accumulators times its two scales (one
// per activation row, one per weight block), or under row scales add the whole depth in the
// tensor cores' accumulators and apply the two scales once. No converted copy of the experts, one
// launch per matrix for all experts instead of one cuBLASLt GEMM per expert.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/kernels.h"

namespace agentrt::engine::cuda {

namespace grouped_fp8 {
constexpr int kTileRows = 128;  // an expert's rows a tile (two halves of 64)
constexpr int kTileCols = 256;  // output columns a tile: two 128-row blocks of the weight
constexpr int kDepth = 128;     // K a stage: one activation scale and one weight block scale
}  // namespace grouped_fp8

// One product of every used expert: out[pad[a] + r][c] = sum over K of x[pad[a] + r] * W_a[c],
// W_a expert active[a]'s matrix, for every padded row r of expert a and c < n.
struct GroupedExpertProduct {
  const uint8_t* x = nullptr;           // e4m3 [slots][k]; expert a's rows pad[a] .. pad[a + 1]
  const float* x_scales = nullptr;      // expert a's: [k / 128][its rows] from pad[a] * (k / 128)
  const int32_t* pad = nullptr;         // [used + 1] (device) row starts, multiples of 16
  const int32_t* tile_start = nullptr;  // [used + 1] (device) expert a's first tile
  const int32_t* active = nullptr;      // [used] (device) the experts' ids
  ExpertsDevice experts;
  // false: the gate and up products stacked (rows [0, n / 2) of w1, then of w3); true: w2.
  bool down = false;
  int64_t used = 0, n = 0, k = 0, tiles = 0;
  float* out = nullptr;  // [slots][ld_out] float32 (or out_bf16 below)
  int64_t ld_out = 0;
  // Set (device, [used + 1]): expert a's row r < out_start[a + 1] - out_start[a] goes to out row
  // out_start[a] + r instead, and its padding rows nowhere (the down product straight into the
  // pairs' rows, ExpertSegments::seg_start).
  const int32_t* out_start = nullptr;
  // Scratch of grouped_expert_scratch_ints: each weight block's largest ue8m0 code.
  int32_t* block_max = nullptr;
  // Scales uniform along the depth: x_scales holds one scale per row (the same value in each of
  // its column blocks), and each 128-row block of the weight takes the largest code of its whole
  // rows (block_max the same for every depth step), so the product needs no per-step promotion:
  // the tensor cores add the whole depth in their float32 accumulators (Hopper's FP8 wgmma adds
  // with fewer mantissa bits than float32: the error this adds is measured by the tests), and the
  // two scales multiply each output once. false: per-block scales, each 128-deep step's product
  // added into float32 accumulators times its two scales (DeepSeek's promotion).
  bool row_scales = false;
  // Set instead of out: the outputs as bf16 here, in out's rows (padded slot rows, or out_start's
  // with the padding rows dropped), each the float32 output rounded to nearest even; half the
  // bytes the product writes and its reader reads back. The gate/up product's slot rows
  // (ExpertGemm::set_gate_up_bf16): the SwiGLU pass quantises its results to e4m3, 4 significant
  // bits (errors up to 2^-4 of a value); bf16's 8 move the gate and up values by at most 2^-9
  // each, their SwiGLU by about 2^-8: a value near a rounding boundary may take the other e4m3
  // code, but the error against the exact result stays what it was (a host simulation of the
  // routed expert tests' rows: 0.084 mean relative L2 either way). The down product's pair rows
  // (ExpertGemm::set_pair_out_bf16): products of e4m3 activations, already 3-8% off the exact
  // ones, so bf16's 2^-9 of a value adds nothing that shows. Last in the struct: the fields above
  // keep their offsets in the kernel's parameters (the float32 kernels' code unchanged).
  __nv_bfloat16* out_bf16 = nullptr;
};

// The ints block_max holds for `used` experts' n x k matrices.
int64_t grouped_expert_scratch_ints(int64_t used, int64_t n, int64_t k);

// Expert a's tiles: ceil(rows / 128) row tiles times ceil(n / 256) column tiles, column-major (an
// expert's row tiles of the same weight rows run side by side and share them through the L2). Fills
// starts[0 .. used] from the padded row starts; returns the total.
int64_t grouped_expert_tiles(const int32_t* pad, int64_t used, int64_t n, int32_t* starts);

// Whether `device` runs the kernel (compute capability 9.0: built for sm_90a), and whether a
// matrix of these shapes fits it (multiples of 128).
bool grouped_expert_product_runs(int device);
bool grouped_expert_product_fits(int64_t n, int64_t k);

// One launch of at most `blocks` resident blocks (one an SM), each taking tiles in turn. Throws
// std::invalid_argument for shapes the kernel does not take, or an output other than exactly one
// of out and out_bf16 (either serves both products, with or without out_start).
void grouped_expert_product(const GroupedExpertProduct& p, int blocks, cudaStream_t stream);

}  // namespace agentrt::engine::cuda
