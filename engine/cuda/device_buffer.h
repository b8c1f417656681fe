// Owned device memory (RAII over cudaMalloc/cudaFree), typed views of it, and growth that keeps
// the first `keep` bytes (caches growing with the sequence).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "engine/cuda/cuda_check.h"

namespace agentrt::engine::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t bytes) { allocate(bytes); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T = float>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  void* get() const { return ptr_; }
  int64_t bytes() const { return bytes_; }

  // Makes the buffer at least `bytes` long; the first `keep` bytes survive a reallocation.
  void reserve(int64_t bytes, int64_t keep = 0, cudaStream_t stream = nullptr) {
    if (bytes <= bytes_) return;
    DeviceBuffer bigger(bytes);
    if (keep > 0 && ptr_)
      AGENTRT_CUDA_CHECK(
          cudaMemcpyAsync(bigger.ptr_, ptr_, keep, cudaMemcpyDeviceToDevice, stream));
    if (stream) AGENTRT_CUDA_CHECK(cudaStreamSynchronize(stream));
    *this = std::move(bigger);
  }

 private:
  void allocate(int64_t bytes) {
    if (bytes <= 0) return;
    AGENTRT_CUDA_CHECK(cudaMalloc(&ptr_, size_t(bytes)));
    bytes_ = bytes;
  }
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// Page-locked host memory (RAII over cudaMallocHost/cudaFreeHost), grown on demand: staging for
// copies the GPU runs asynchronously, which a pageable buffer would stage once more through the
// driver's own. Growing drops the contents; copies still reading it must have finished.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  char* reserve(int64_t bytes) {
    if (bytes > bytes_) {
      if (ptr_) cudaFreeHost(ptr_);
      ptr_ = nullptr;
      bytes_ = 0;
      AGENTRT_CUDA_CHECK(cudaMallocHost(&ptr_, size_t(bytes)));
      bytes_ = bytes;
    }
    return static_cast<char*>(ptr_);
  }
  // reserve() keeping the first `keep` bytes (at least doubling, so packing grows it rarely).
  char* grow(int64_t bytes, int64_t keep) {
    if (bytes <= bytes_) return static_cast<char*>(ptr_);
    void* bigger = nullptr;
    const int64_t size = std::max(bytes, 2 * bytes_);
    AGENTRT_CUDA_CHECK(cudaMallocHost(&bigger, size_t(size)));
    if (ptr_) {
      if (keep > 0) std::memcpy(bigger, ptr_, size_t(std::min(keep, bytes_)));
      cudaFreeHost(ptr_);
    }
    ptr_ = bigger;
    bytes_ = size;
    return static_cast<char*>(ptr_);
  }
  const char* data() const { return static_cast<const char*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace agentrt::engine::cuda
