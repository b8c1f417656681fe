// Where fp4_gemm.cu's threads put and find things: the loader's share of a tile, the shared
// memory rows each ldmatrix lane addresses, and the tile element of each accumulator value.
// Host-callable, so a host test can replay a tile with the mma fragment layouts and check the
// mapping without a GPU.
#pragma once

#include <cuda_runtime.h>

namespace agentrt::engine::cuda::fp4_gemm {

constexpr int kThreads = 256;
constexpr int kBM = 64, kBN = 128, kBK = 64;  // tile rows (pairs), columns (outputs), K step
// bf16 per staged row: 8 past kBK puts consecutive rows 144 bytes apart, so the eight row
// addresses of an ldmatrix land on distinct 16-byte bank groups.
constexpr int kRow = kBK + 8;

// Thread tid stages activations of tile row a_row, columns a_col .. a_col + 15 of the K step,
// and the 32 weights of block b_block (0, 1) of the step's row b_row.
struct LoaderShare {
  int a_row, a_col, b_row, b_block;
};
__host__ __device__ inline LoaderShare loader_share(int tid) {
  return {tid / 4, (tid % 4) * 16, tid / 2, tid % 2};
}

// Warp w owns tile rows (w / 4) * 32 .. + 31 and columns (w % 4) * 32 .. + 31: m-tiles mt = 0, 1
// of 16 rows, n-tiles nt = 0..3 of 8 columns.
// The element offset (in a [rows][kRow] stage) of the row that `lane` addresses in the ldmatrix.x4
// giving m-tile mt's A fragment at 16-column step ks: matrices rows 0-7 / 8-15 x columns 0-7,
// then the same at columns 8-15 (a0..a3 of mma.m16n8k16).
__host__ __device__ inline int a_fragment_row(int lane, int wm, int mt, int ks) {
  return (wm * 32 + mt * 16 + lane % 16) * kRow + ks * 16 + (lane / 16) * 8;
}
// The same for the B fragments of n-tiles 2 np and 2 np + 1 (the weights stored [n][k], so
// matrices of 8 n-rows x 8 k): n-tile 2 np at k 0-7, 8-15, then n-tile 2 np + 1 at k 0-7, 8-15.
__host__ __device__ inline int b_fragment_row(int lane, int wn, int np, int ks) {
  const int i = lane / 8;
  return (wn * 32 + np * 16 + (i / 2) * 8 + lane % 8) * kRow + ks * 16 + (i % 2) * 8;
}
// The tile element of accumulator value v (0-3) of (mt, nt) in `lane`: c0, c1 at row g, columns
// 2c, 2c + 1; c2, c3 eight rows down.
__host__ __device__ inline int out_row(int lane, int wm, int mt, int v) {
  return wm * 32 + mt * 16 + lane / 4 + (v / 2) * 8;
}
__host__ __device__ inline int out_col(int lane, int wn, int nt, int v) {
  return wn * 32 + nt * 8 + 2 * (lane % 4) + v % 2;
}

}  // namespace agentrt::engine::cuda::fp4_gemm
