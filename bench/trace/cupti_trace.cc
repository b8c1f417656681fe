// A CUPTI injection library that records every kernel, memset and memcpy the GPU runs, with its GPU
// start and end, and writes them as CSV when the program exits:
//
//   CUDA_INJECTION64_PATH=libcupti_trace.so CUPTI_TRACE_OUT=trace.csv bench_engine_cuda ...
//   python3 scripts/trace_step.py trace.csv     # one graph-replayed decode step, kernel by kernel
//
// Why: the device machine has no Nsight Systems, and Nsight Compute stops on a whole
// graph-replayed decode step, so neither shows where a step's time goes between the kernels of
// its graph. CUPTI's concurrent-kernel records keep each graph node's own start and end, the
// graph launch they belong to (correlation id) and the stream.
//
// The CUDA runtime loads this library and calls InitializeInjection when it initialises, so the
// program being traced is not rebuilt or relinked.
#include <cupti.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
  uint64_t start = 0, end = 0;
  uint32_t correlation = 0, stream = 0, graph = 0;
  uint64_t graph_node = 0;
  int grid = 0, block = 0, shared_bytes = 0;
  std::string name;
};

// Records live in this one object for the program's life: CUPTI's buffer callbacks are plain
// functions with no user pointer, so the tracer is reached through it.
struct Tracer {
  std::mutex mutex;
  std::vector<Record> records;
  std::string out_path;
  uint64_t dropped = 0;
};

Tracer& tracer() {
  static Tracer* t = new Tracer;  // never destroyed: the atexit writer may run after statics die
  return *t;
}

constexpr size_t kBufferBytes = size_t(8) << 20;

void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "cupti_trace: %s failed: %s\n", what, text ? text : "unknown error");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

// A memset's or memcpy's record: the fields both activity kinds share.
template <typename Activity>
Record copy_record(const Activity& m, std::string name) {
  Record r;
  r.start = m.start;
  r.end = m.end;
  r.correlation = m.correlationId;
  r.stream = m.streamId;
  r.graph = m.graphId;
  r.graph_node = m.graphNodeId;
  r.name = std::move(name);
  return r;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  Tracer& t = tracer();
  CUpti_Activity* a = nullptr;
  std::lock_guard<std::mutex> lock(t.mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &a) == CUPTI_SUCCESS) {
    Record r;
    if (a->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || a->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(a);
      r = {k->start,
           k->end,
           k->correlationId,
           k->streamId,
           k->graphId,
           k->graphNodeId,
           k->gridX * k->gridY * k->gridZ,
           k->blockX * k->blockY * k->blockZ,
           k->dynamicSharedMemory + k->staticSharedMemory,
           k->name ? k->name : "?"};
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(a);
      r = copy_record(*m, "memset " + std::to_string(m->bytes) + " B");
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      // Copies between decode steps (logits back, metadata up) are part of a step's wall.
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(a);
      const char* kinds[] = {"?",    "HtoD", "DtoH", "HtoA", "AtoH", "AtoA",
                             "AtoD", "DtoA", "DtoD", "HtoH", "PtoP"};
      r = copy_record(*m, std::string("memcpy ") + (m->copyKind < 11 ? kinds[m->copyKind] : "?") +
                              " " + std::to_string(m->bytes) + " B");
    } else {
      continue;
    }
    t.records.push_back(std::move(r));
  }
  size_t dropped = 0;
  cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
  t.dropped += dropped;
  std::free(buffer);
}

// Kernel names are C++ signatures full of commas: the CSV quotes them.
std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

void write_records() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  Tracer& t = tracer();
  std::lock_guard<std::mutex> lock(t.mutex);
  FILE* f = std::fopen(t.out_path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "cupti_trace: cannot write %s: %s\n", t.out_path.c_str(),
                 std::strerror(errno));
    return;
  }
  std::fprintf(f, "start_ns,end_ns,correlation,stream,graph,graph_node,grid,block,shared,name\n");
  for (const Record& r : t.records)
    std::fprintf(f, "%llu,%llu,%u,%u,%u,%llu,%d,%d,%d,%s\n", (unsigned long long)r.start,
                 (unsigned long long)r.end, r.correlation, r.stream, r.graph,
                 (unsigned long long)r.graph_node, r.grid, r.block, r.shared_bytes,
                 quoted(r.name).c_str());
  std::fclose(f);
  std::fprintf(stderr, "cupti_trace: %zu records to %s (%llu dropped)\n", t.records.size(),
               t.out_path.c_str(), (unsigned long long)t.dropped);
}

}  // namespace

extern "C" int InitializeInjection() {
  const char* out = std::getenv("CUPTI_TRACE_OUT");
  tracer().out_path = out && *out ? out : "cupti_trace.csv";
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register callbacks");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memsets");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable memcpys");
  std::atexit(write_records);
  return 1;
}
