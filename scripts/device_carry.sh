#!/usr/bin/env bash
# Fills .device-carry-cuda/ (untracked; the run tool's carry) for the GPU machine (docs/cuda.md):
#   deps/   nlohmann-json's headers and CMake package and GoogleTest's sources, from this box's
#           Debian 12 packages: all `scripts/device_cuda.sh build` needs beyond the machine's
#           CUDA toolkit, CMake and compiler (the engine needs none of the runtime's libraries)
#   with --binaries: this box's engine_tests, bench_engine_cuda, bench_engine_cuda_gemv (from
#           BUILD, default build/), libcudart and (where built) the CUPTI tracer: device_cuda.sh
#           runs them when the build there fails or is skipped
#   with --pack too: those binaries xz-packed into bins.tar.xz (a fifth of their size; the carry
#           holds 64 MiB), which scripts/device_env.sh unpacks on the device; BINARIES="..."
#           packs more files already in the carry (e.g. a baseline's bench copied in as bench_base)
#   scripts/device_carry.sh [--binaries [--pack]]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARRY=.device-carry-cuda
BUILD=${BUILD:-build}
mkdir -p "$CARRY/deps/include" "$CARRY/deps/share/cmake"

need() {
  [[ -e $1 ]] || { echo "device_carry: $1 is missing (install $2)" >&2; exit 1; }
}
need /usr/include/nlohmann/json.hpp nlohmann-json3-dev
need /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake nlohmann-json3-dev
need /usr/src/googletest/CMakeLists.txt googletest
rm -rf "$CARRY/deps/include/nlohmann" "$CARRY/deps/share/cmake/nlohmann_json" "$CARRY/deps/googletest"
cp -r /usr/include/nlohmann "$CARRY/deps/include/"
# The package's targets file finds the headers relative to itself (three folders up: deps/).
cp -r /usr/share/cmake/nlohmann_json "$CARRY/deps/share/cmake/"
cp -r /usr/src/googletest "$CARRY/deps/googletest"
echo "device_carry: $CARRY/deps ($(du -sh "$CARRY/deps" | cut -f1))"

if [[ ${1:-} == --binaries ]]; then
  for f in tests/engine/engine_tests bench/bench_engine_cuda bench/bench_engine_cuda_gemv; do
    need "$BUILD/$f" "a build with CUDA: cmake --build $BUILD --target $(basename "$f")"
    cp "$BUILD/$f" "$CARRY/"
  done
  mkdir -p "$CARRY/lib"
  cp -L /usr/local/cuda/lib64/libcudart.so.13 "$CARRY/lib/"
  # The CUPTI tracer (scripts/device_trace_prefill.sh, device_first_call.sh), where built.
  if [[ -e $BUILD/bench/libcupti_trace.so ]]; then
    cp "$BUILD/bench/libcupti_trace.so" "$CARRY/lib/"
  fi
  echo "device_carry: binaries of $(git rev-parse --short HEAD) from $BUILD"
  if [[ ${2:-} == --pack ]]; then
    names=(engine_tests bench_engine_cuda bench_engine_cuda_gemv ${BINARIES:-})
    tar cf - -C "$CARRY" "${names[@]}" | xz -T0 -6 > "$CARRY/bins.tar.xz"
    (cd "$CARRY" && rm -f "${names[@]}")
    echo "device_carry: packed into $CARRY/bins.tar.xz ($(du -h "$CARRY/bins.tar.xz" | cut -f1))"
  fi
fi
