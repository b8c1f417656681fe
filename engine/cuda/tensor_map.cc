#include "engine/cuda/tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace agentrt::engine::cuda {
namespace {

// The driver's encoder, looked up once through the runtime (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                             cudaEnableDefault, &found);
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess || p == nullptr)
      throw std::runtime_error(std::string("stage_tensor_map: the driver has no "
                                           "cuTensorMapEncodeTiled (") +
                               cudaGetErrorString(err) + ")");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

}  // namespace

StageTensorMap stage_tensor_map(const void* data, int64_t rows, int64_t cols, int box_rows,
                                int box_cols) {
  const std::string what = "stage_tensor_map(" + std::to_string(rows) + " x " +
                           std::to_string(cols) + " bytes, box " + std::to_string(box_rows) +
                           " x " + std::to_string(box_cols) + ")";
  if (rows <= 0 || cols <= 0 || cols % 128 != 0 || box_rows <= 0 || box_rows > 256 ||
      box_cols <= 0 || box_cols % 128 != 0 || box_cols / 128 > 256 || box_cols > cols ||
      (reinterpret_cast<uintptr_t>(data) & 15))
    throw std::invalid_argument(what + ": not a shape a tensor map takes");
  const cuuint32_t element_strides[3] = {1, 1, 1};
  StageTensorMap m;
  // Rank 3, dimensions innermost first: the 128 bytes of a column chunk, the rows, the chunks.
  const cuuint64_t dims3[3] = {128, cuuint64_t(rows), cuuint64_t(cols / 128)};
  const cuuint64_t strides3[2] = {cuuint64_t(cols), 128};
  const cuuint32_t box3[3] = {128, cuuint32_t(box_rows), cuuint32_t(box_cols / 128)};
  CUresult r =
      encoder()(&m.map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, const_cast<void*>(data), dims3, strides3,
                box3, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r == CUDA_SUCCESS) {
    m.rank = 3;
    return m;
  }
  // Rank 2, the plain row-major form: one chunk of box_rows rows per copy.
  const cuuint64_t dims2[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides2[1] = {cuuint64_t(cols)};
  const cuuint32_t box2[2] = {128, cuuint32_t(box_rows)};
  const CUresult r2 =
      encoder()(&m.map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(data), dims2, strides2,
                box2, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r2 != CUDA_SUCCESS)
    throw std::runtime_error(what + ": cuTensorMapEncodeTiled returned " + std::to_string(int(r)) +
                             " (rank 3) and " + std::to_string(int(r2)) + " (rank 2)");
  m.rank = 2;
  return m;
}

}  // namespace agentrt::engine::cuda
