// Weight matrices on the GPU and the decode-sized product with them (y = x W^T for a few tokens),
// the memory-bound heart of batch-1 decoding. Weights keep their stored dtype on the device
// (f32, bf16, f16, FP8 e4m3 with 128x128 block scales, MXFP4 with one ue8m0 scale per 32
// columns) and are decoded inside the kernel: each warp streams one row with 16-byte loads.
// The interface has no CUDA types, so plain C++ (tests, benchmarks) can use it.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "engine/matmul.h"

namespace agentrt::engine::cuda {

// Whether a usable CUDA device is present; if not, `why` says what is missing.
bool device_available(std::string* why = nullptr);

// A WeightMatrix copied to device memory (data and scales), freed on destruction.
class DeviceMatrix {
 public:
  explicit DeviceMatrix(const WeightMatrix& host);
  ~DeviceMatrix();
  DeviceMatrix(const DeviceMatrix&) = delete;
  DeviceMatrix& operator=(const DeviceMatrix&) = delete;

  // The device-side view (data and scale point to device memory).
  const WeightMatrix& view() const { return view_; }
  int64_t device_bytes() const { return data_bytes_ + scale_bytes_; }

 private:
  WeightMatrix view_;
  void* data_ = nullptr;
  void* scale_ = nullptr;
  int64_t data_bytes_ = 0;
  int64_t scale_bytes_ = 0;
};

// How the one-row products may run. tensor_cores: FP8 products of 2 MB or more may run on the
// tensor cores with x as bf16 high + low parts (float32-like, ~1e-5 relative; gemv_stream.cu);
// false keeps every product in float32. tensor_map: those tensor-core products fill each stage
// of their ring with one tensor copy (a TMA tensor map, rows swizzled in shared memory) instead
// of one bulk copy per row (CudaOptions::tensor_map_copies; off until measured on the GPU).
// sum_group: the tensor-core products add up their warps' partial sums after one barrier per
// this many tasks (1..4) instead of one per task (CudaOptions::gemv_sum_group; the same values,
// 1 until measured). A bool converts to the mode it names (the others as by default).
struct GemvMode {
  bool tensor_cores = true;
  bool tensor_map = false;
  int sum_group = 1;
  // Several activation rows of an FP8 matrix on the tensor-core stream kernel (gemv_stream_rows),
  // not the CUDA-core GEMV per 8 rows.
  bool several_rows = true;
  // One-row FP8 products (or same-input sets) of at least this many bytes on gemv_warp_rows'
  // kernel, each warp owning whole 16-row tiles, where they make 8 tiles or more a block (with
  // fewer, most of its warps idle); 0: never (CudaOptions::warp_rows_bytes).
  int64_t warp_rows_bytes = 0;
  int warp_rows_depth = 2;  // its ring slots per warp, at least (1: more warps, one slot each)
  // Column splits a tile may take (powers of two, until a block has 8 tasks): each split another
  // warp's, added up in order by the last; 1: whole tiles only, so wide products with few tiles
  // keep gemv_stream_mma_kernel.
  int warp_rows_splits = 1;
  // Rows a bulk copy where a matrix's rows are as wide as a stage (wq_b's 1,024 columns): 2 (8
  // copies of 2 KB a 16-row stage) or 8 (2 of 8 KB; warp_rows_layout.h's staged_row).
  int warp_rows_copy_rows = 2;
  // The streamed products' producers copy at most this many stages of weights before the
  // kernel before them has finished, then wait for it (0: as many as the ring holds). Their
  // copies compete for memory with that kernel's loads.
  int early_stages = 0;
  // The streamed one-row products' producers keep at most this many bytes of copies asked for
  // and not yet landed, in whole stages, at least one (0: as many as the ring holds;
  // CudaOptions::ring_in_flight_bytes). Matrices of 256 MB or more (the head) keep their whole
  // ring.
  int64_t in_flight_bytes = 0;
  // The streamed one-row products' grid: at most this many blocks (0: one per SM), so a product
  // run beside another leaves it SMs (CudaOptions::shared_expert_blocks).
  int max_blocks = 0;
  // The streamed one-row products' shared memory a block: at most this many bytes (0: the
  // device's opt-in limit), a shallower ring leaving room on each SM for the blocks of the
  // kernel before it (CudaOptions::attention_beside_wo_a), so the product's blocks start copying
  // while that kernel runs instead of after its blocks leave.
  int64_t max_shared = 0;
  constexpr GemvMode(bool cores = true, bool map = false, int group = 1, bool rows = true,
                     int64_t warp_rows = 0, int depth = 2, int splits = 1, int early = 0)
      : tensor_cores(cores),
        tensor_map(map),
        sum_group(group),
        several_rows(rows),
        warp_rows_bytes(warp_rows),
        warp_rows_depth(depth),
        warp_rows_splits(splits),
        early_stages(early) {}
};

// y[t][r] = sum_c x[t][c] * w[r][c] for t < n, with x [n][cols] and y [n][rows] in device
// memory; runs on `stream` (a cudaStream_t, nullptr for the default stream).
void gemv(const WeightMatrix& device_w, const float* x, int64_t n, float* y, void* stream = nullptr,
          GemvMode mode = {});

// The same with row strides (in floats) for x and y, e.g. a column slice of a wider activation.
void gemv_strided(const WeightMatrix& device_w, const float* x, int64_t x_stride, int64_t n,
                  float* y, int64_t y_stride, void* stream = nullptr, GemvMode mode = {});

// One activation row times a bf16 or FP8 matrix of at least 2 MB, streamed through shared
// memory (gemv_stream.cu); group_rows > 0: rows [g * group_rows, (g + 1) * group_rows) read
// x + g * x_offset. Returns false, having launched nothing, where the matrix's type, shape or
// alignment do not allow it (fits() says so beforehand); the plain gemv takes these products
// itself where they do.
bool gemv_stream_fits(const WeightMatrix& device_w, const float* x, int64_t group_rows,
                      int64_t x_offset, GemvMode mode);
bool gemv_stream(const WeightMatrix& device_w, const float* x, float* y, int64_t group_rows,
                 int64_t x_offset, void* stream, GemvMode mode);

// How gemv_stream's one-row kernel reads a matrix: block p of `parts` streams units (tiles of
// unit_bytes) [p * units / parts, (p + 1) * units / parts) in order.
struct StreamSlices {
  const void* data = nullptr;
  int64_t parts = 0, units = 0, unit_bytes = 0;
};
// gemv_stream's slices of w for activations x (no row groups); parts 0 where gemv_stream would
// not take w on that kernel (another kernel, or none).
StreamSlices gemv_stream_slices(const WeightMatrix& device_w, const float* x, GemvMode mode);

// A block-diagonal product: the rows form `groups` equal groups, group g reading columns
// [g * cols, (g + 1) * cols) of each activation row (x_stride >= groups * cols); one launch.
void gemv_grouped(const WeightMatrix& device_w, int64_t groups, const float* x, int64_t x_stride,
                  int64_t n, float* y, int64_t y_stride, void* stream = nullptr,
                  GemvMode mode = {});

// Products of several matrices (at most kMaxGemvProducts, the same column count) with the same
// activations in one launch: decode's products that read the layer input are each too small to fill
// the GPU or hide a launch. y[t * y_stride + r] for each product.
constexpr int kMaxGemvProducts = 8;
struct GemvProduct {
  WeightMatrix w;  // device view
  float* y;
  int64_t y_stride;
};
void gemv_same_input(std::span<const GemvProduct> products, const float* x, int64_t x_stride,
                     int64_t n, void* stream = nullptr, GemvMode mode = {});

// The same streamed through shared memory on the tensor cores (gemv_stream.cu) where every
// matrix is FP8 of a width it tiles and together they hold 2 MB or more: one launch for one
// activation row, one per 8 (or 4) for several, each decoding the weights once for its rows;
// returns false, having launched nothing, where not. gemv_same_input takes this path itself
// (unless told to keep float32).
bool gemv_stream_set(std::span<const GemvProduct> products, const float* x, int64_t x_stride,
                     int64_t n, void* stream = nullptr, GemvMode mode = {});

// gemv_strided / gemv_grouped's path for 2 or more activation rows and an FP8 matrix of 2 MB or
// more: the tensor-core kernel for 8 (or 4) rows a launch; false, having launched nothing,
// where it does not take the matrix.
bool gemv_stream_rows(const WeightMatrix& device_w, const float* x, int64_t x_stride, int64_t n,
                      float* y, int64_t y_stride, int64_t group_rows, int64_t x_offset,
                      void* stream = nullptr, GemvMode mode = {});

// One activation row times FP8 matrices of the same width (a same-input set, or one matrix in
// block-diagonal groups as gemv_stream's) on the tensor cores, each warp multiplying whole
// 16-row tiles (gemv_warp_rows.cu): widths a multiple of 1,024, rows (and row_offset) of 16;
// stages of stage_cols columns (2,048 where the width is a multiple of it, else 1,024), at
// least `depth` ring slots per warp. Returns false, having launched nothing, where the shapes
// do not allow it. gemv_stream and gemv_stream_set take this path for products of
// GemvMode::warp_rows_bytes or more in 8 or more tiles a block.
// x_norm set: x is RMSNormed with that weight and eps on its way in (refused for groups).
// in_flight_bytes: GemvMode::in_flight_bytes; copy_rows: GemvMode::warp_rows_copy_rows.
bool gemv_warp_rows(std::span<const GemvProduct> products, const float* x, int64_t group_rows,
                    int64_t x_offset, void* stream = nullptr, int64_t stage_cols = 2048,
                    int depth = 2, int max_splits = 1, int early_stages = 0,
                    const float* x_norm = nullptr, float x_norm_eps = 0.0f,
                    int64_t in_flight_bytes = 0, int copy_rows = 2);

// gemv_stream_set's path for one activation row where it takes gemv_warp_rows (GemvMode's
// warp_rows_bytes and a block of 8 tiles or more), with x RMSNormed (weight, eps) on its way in,
// as rms_norm_rows would first; false, having launched nothing, where that path does not apply.
bool gemv_warp_rows_normed(std::span<const GemvProduct> products, const float* x,
                           const float* weight, float eps, void* stream, GemvMode mode);

// The plain version it is tested against: one thread per output, scalar decoding.
void gemv_reference(const WeightMatrix& device_w, const float* x, int64_t n, float* y,
                    void* stream = nullptr);

// Small device-buffer helpers for tests and benchmarks.
float* device_floats(int64_t count);
void free_device(void* p);
void copy_to_device(void* dst, const void* src, int64_t bytes);
void copy_to_host(void* dst, const void* src, int64_t bytes);
void copy_device_to_device(void* dst, const void* src, int64_t bytes);
void zero_device(void* p, int64_t bytes);
void synchronize();

}  // namespace agentrt::engine::cuda
