// Every tensor of the forward pass uploaded once to the GPU: matrices in their stored dtype
// (DeviceMatrix, decoded inside the kernels), vectors as float32, the routed experts' views
// gathered into device arrays the expert kernels index by expert id, and the rope tables.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_matrix.h"
#include "engine/cuda/kernels.h"
#include "engine/forward_config.h"
#include "engine/forward_weights.h"

namespace agentrt::engine::cuda {

using DeviceMatrixPtr = std::unique_ptr<DeviceMatrix>;

struct CompressorOnDevice {
  DeviceMatrixPtr wkv, wgate;
  DeviceBuffer ape, norm;
  CompressorDevice view;
};

struct IndexerOnDevice {
  CompressorOnDevice compressor;
  DeviceMatrixPtr wq_b, weights_proj;
};

struct HyperOnDevice {
  DeviceBuffer fn, base, scale;
  HyperDevice view() const { return {fn.as<float>(), base.as<float>(), scale.as<float>()}; }
};

struct ExpertOnDevice {
  DeviceMatrixPtr w1, w2, w3;
};

struct LayerOnDevice {
  HyperOnDevice attn_hc, ffn_hc;
  DeviceBuffer attn_norm, ffn_norm;
  DeviceMatrixPtr wq_a, wq_b, wkv, wo_a, wo_b;
  DeviceBuffer q_norm, kv_norm, sinks;
  std::optional<CompressorOnDevice> compressor;
  std::optional<IndexerOnDevice> indexer;
  DeviceMatrixPtr gate;
  DeviceBuffer bias, tid2eid;
  std::vector<ExpertOnDevice> experts;
  DeviceBuffer expert_views;  // WeightMatrix [3][experts]: w1, w2, w3
  ExpertsDevice experts_view;
  ExpertOnDevice shared;
};

struct WeightsOnDevice {
  DeviceMatrixPtr embed, head_own;
  WeightMatrix head;  // head_own's view, or embed's when tied
  DeviceBuffer norm, hc_head_fn, hc_head_base, hc_head_scale;
  std::vector<LayerOnDevice> layers;
  DeviceBuffer rope_main_freq, rope_compress_freq;
  DeviceRope rope_main, rope_compress;
  int64_t bytes = 0;  // device bytes of all weights

  static WeightsOnDevice upload(const ForwardConfig& config, const ForwardWeights& host);
  HyperDevice head_hyper() const {
    return {hc_head_fn.as<float>(), hc_head_base.as<float>(), hc_head_scale.as<float>()};
  }
};

}  // namespace agentrt::engine::cuda
