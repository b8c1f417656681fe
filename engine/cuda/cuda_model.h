// The CUDA implementation of engine/model.h's Model and ModelSequence, and its loader.
// Model::load(dir, {Device::cuda}) calls load_cuda_model with the default CudaOptions; tests and
// the benchmark pick the GEMM precision here.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "engine/cuda/device_forward.h"
#include "engine/model.h"

namespace agentrt::engine {

// Throws (saying why) when no usable GPU is present.
std::shared_ptr<const Model> load_cuda_model(const std::filesystem::path& dir,
                                             const LoadOptions& options,
                                             const cuda::CudaOptions& cuda_options);

// GPU milliseconds per forward stage, summed since load, for a model made by load_cuda_model
// with CudaOptions::profile (empty otherwise). For benchmarks.
std::map<std::string, double> cuda_stage_ms(const Model& model);

// Under GemmPrecision::fp8: how many prefill products ran as FP8 GEMMs, and how many FP8 ones
// fell back to bf16, since load. For benchmarks.
cuda::LinearRunner::Fp8Counts cuda_fp8_counts(const Model& model);

// CudaOptions::pick_in_step_graph: how many deferred picks their decode step took since load,
// inside its graph or right before it (pick_before_step). For tests and benchmarks.
cuda::TakenPicks cuda_taken_picks(const Model& model);

}  // namespace agentrt::engine
