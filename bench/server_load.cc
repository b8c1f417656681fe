// WebSocket load on loopback: N idle sessions held open plus M active sessions that each run one
// turn on a tiny model; prints throughput, p50/p99 of event inter-arrival and first-event latency,
// server memory, and whether every session finished.
//   bench_server_load --model DIR [--idle 1000] [--active 64] [--max-tokens 32] [--batching off]
#include <sys/resource.h>

#include <algorithm>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "runtime/native_backend.h"
#include "runtime/server/asio.h"
#include "runtime/server/server.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

long rss_kb() {
  std::ifstream in("/proc/self/status");
  std::string key;
  long value = 0;
  while (in >> key) {
    if (key == "VmRSS:") {
      in >> value;
      return value;
    }
  }
  return 0;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = std::string(AGENTRT_HOME) + "/models/tiny-v4";
  int idle = 1000, active = 64, max_tokens = 32;
  bool batching = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model")
      model = argv[i + 1];
    else if (a == "--idle")
      idle = std::stoi(argv[i + 1]);
    else if (a == "--active")
      active = std::stoi(argv[i + 1]);
    else if (a == "--max-tokens")
      max_tokens = std::stoi(argv[i + 1]);
    else if (a == "--batching")
      batching = std::string(argv[i + 1]) != "off";
  }
  struct rlimit nofile {
    65536, 65536
  };
  setrlimit(RLIMIT_NOFILE, &nofile);
  agentrt::AgentOptions defaults;
  defaults.max_tokens_per_step = max_tokens;
  defaults.limits.max_steps = 1;
  agentrt::server::ServerOptions options;
  options.port = 0;
  options.log = false;
  options.max_sessions = static_cast<size_t>(idle + active + 10);
  const long rss_before = rss_kb();
  // The server's configuration: continuous batching of every session's decode steps.
  agentrt::NativeBackendOptions native;
  if (batching) native.batching = agentrt::DecodeBatcherOptions{};
  auto backend = std::make_shared<agentrt::NativeBackend>(model, native);
  agentrt::server::Server server(backend, nullptr, defaults, options);
  const uint16_t port = server.start();
  const long rss_loaded = rss_kb();

  asio::io_context io;
  std::vector<std::unique_ptr<websocket::stream<tcp::socket>>> idle_sessions;
  const auto connect = [&](websocket::stream<tcp::socket>& ws) {
    ws.next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    ws.handshake("127.0.0.1", "/v1/sessions");
    beast::flat_buffer b;
    ws.read(b);  // session.created
  };
  const auto t_idle = Clock::now();
  for (int i = 0; i < idle; ++i) {
    idle_sessions.push_back(std::make_unique<websocket::stream<tcp::socket>>(io));
    connect(*idle_sessions.back());
  }
  const double idle_seconds = std::chrono::duration<double>(Clock::now() - t_idle).count();
  const long rss_idle = rss_kb();

  std::mutex mutex;
  std::vector<double> gaps_ms, first_ms;
  int finished = 0;
  int64_t events = 0;
  const auto t_active = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < active; ++i) {
    threads.emplace_back([&, i] {
      asio::io_context local;
      websocket::stream<tcp::socket> ws(local);
      connect(ws);
      const std::string item =
          R"({"type":"conversation.item.create","item":{"type":"message","content":"Say something, session )" +
          std::to_string(i) + R"("}})";
      ws.write(asio::buffer(item));
      const auto sent = Clock::now();
      ws.write(asio::buffer(std::string(R"({"type":"response.create"})")));
      auto last = sent;
      std::vector<double> my_gaps;
      double first = -1;
      int64_t my_events = 0;
      for (;;) {
        beast::flat_buffer b;
        beast::error_code ec;
        ws.read(b, ec);
        if (ec) break;
        const auto now = Clock::now();
        ++my_events;
        if (first < 0)
          first = std::chrono::duration<double, std::milli>(now - sent).count();
        else
          my_gaps.push_back(std::chrono::duration<double, std::milli>(now - last).count());
        last = now;
        if (beast::buffers_to_string(b.data()).find("\"response.done\"") != std::string::npos) {
          std::lock_guard lock(mutex);
          ++finished;
          break;
        }
      }
      std::lock_guard lock(mutex);
      gaps_ms.insert(gaps_ms.end(), my_gaps.begin(), my_gaps.end());
      first_ms.push_back(first);
      events += my_events;
    });
  }
  for (auto& t : threads) t.join();
  const double active_seconds = std::chrono::duration<double>(Clock::now() - t_active).count();
  const auto& m = server.metrics();
  std::printf("| metric | value |\n|---|---:|\n");
  std::printf("| idle sessions opened | %d in %.2f s |\n", idle, idle_seconds);
  std::printf("| active sessions finished | %d / %d |\n", finished, active);
  std::printf("| active phase wall time | %.2f s |\n", active_seconds);
  std::printf("| events delivered | %lld (%.0f /s) |\n", static_cast<long long>(events),
              events / active_seconds);
  std::printf("| tokens generated | %lld (%.0f tok/s) |\n",
              static_cast<long long>(m.completion_tokens.load()),
              m.completion_tokens.load() / active_seconds);
  std::printf("| first event after response.create p50 / p99 | %.1f / %.1f ms |\n",
              percentile(first_ms, 0.5), percentile(first_ms, 0.99));
  std::printf("| event inter-arrival p50 / p99 | %.2f / %.2f ms |\n", percentile(gaps_ms, 0.5),
              percentile(gaps_ms, 0.99));
  const auto batch =
      backend->batcher() ? backend->batcher()->stats() : agentrt::DecodeBatcherStats{};
  std::printf("| decode passes / steps / mean batch / max batch | %lld / %lld / %.1f / %lld |\n",
              static_cast<long long>(batch.passes), static_cast<long long>(batch.decode_steps),
              batch.passes ? double(batch.decode_steps) / batch.passes : 0.0,
              static_cast<long long>(batch.max_batch_seen));
  std::printf(
      "| server process RSS: start / model loaded / +idle sessions / end | %ld / %ld / %ld / %ld "
      "MB |\n",
      rss_before / 1024, rss_loaded / 1024, rss_idle / 1024, rss_kb() / 1024);
  idle_sessions.clear();
  server.stop();
  return finished == active ? 0 : 1;
}
