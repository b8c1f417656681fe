// TMA tensor maps (sm_90's tensor copies) for the streamed tensor-core products: one copy
// instruction fills a whole stage of rows, where bulk copies take one instruction per row (the
// rows of a stage are a column slice of the matrix, and each row is padded in shared memory so
// that an mma fragment's 8 rows fall on distinct banks). The tensor map gets the same effect
// from the copy engine's 128-byte swizzle.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace agentrt::engine::cuda {

// A map over the row-major byte matrix at `data` (rows x cols bytes; cols a multiple of 128,
// data 16-byte aligned) whose copies land in shared memory as [chunks][box_rows][128 bytes]
// (chunks: 128-column slices), 128-byte swizzled: the 16-byte unit u of row r is stored at
// unit u ^ (r % 8) of its 128-byte line (stage_unit below), so a destination must be 1,024-byte
// aligned. rank 3: one copy takes box_cols / 128 chunks (coordinates {0, row, chunk}; the
// chunks' stride, 128 bytes, is below the rows'; where the driver refuses that, rank 2); rank
// 2: one copy takes one chunk (coordinates {chunk * 128, row}). box_rows <= 256; box_cols a
// multiple of 128, at most 256 chunks. Throws, saying what the driver refused.
struct StageTensorMap {
  CUtensorMap map;
  int rank = 0;
};
StageTensorMap stage_tensor_map(const void* data, int64_t rows, int64_t cols, int box_rows,
                                int box_cols);

// Where the 16-byte unit u (0..7) of a 128-byte column chunk of row r lands in its line.
__host__ __device__ constexpr int stage_unit(int u, int r) { return u ^ (r & 7); }

}  // namespace agentrt::engine::cuda
