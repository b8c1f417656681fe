// The copy pipeline of the streamed decode products alone (bench_engine_cuda_gemv
// --copy-probe 1): the ring of gemv_stream.cu and moe_decode.cu (one block per SM, a producer
// lane keeping up to six 32 KB stages in flight with bulk copies, 16 consumer warps releasing
// each stage) with consumers that only touch each stage, so a pass costs what its copies cost.
// A stage is filled by 32 KB / copy_bytes copies (the FP8 tensor-core kernel copies one padded
// row per copy, 1 or 2 KB; moe_decode one whole stage): the probe says whether many small
// copies stream slower than few large ones, which the kernels' times alone cannot tell apart
// from their consumers' work.
#pragma once

#include <cstdint>

namespace agentrt::engine::cuda {

struct CopyProbe {
  double us_per_pass = 0;  // one launch streaming the whole buffer once
  double gbps = 0;         // bytes streamed per second
};

// Streams `bytes` (a multiple of 32 KB) of device memory at `src` into shared memory, one launch
// per pass, `passes` launches timed together (each pass reads `src` + (pass % buffers) * bytes,
// so `buffers` copies side by side can defeat the L2). copy_bytes: a power of two from 256 to
// 32,768; row_pad: bytes of shared memory left after each copy (0 or a multiple of 16), as the
// tensor-core kernel pads its rows.
CopyProbe stream_copy_probe(const void* src, int64_t bytes, int buffers, int64_t copy_bytes,
                            int64_t row_pad, int passes);

}  // namespace agentrt::engine::cuda
