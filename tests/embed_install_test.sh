#!/usr/bin/env bash
# Installs agentrt from the build tree into a temporary prefix and builds examples/embed against
# it with find_package(agentrt): the embedding API works as an installed package.
set -euo pipefail
build="$1"; src="$2"
prefix="$(mktemp -d)"; out="$(mktemp -d)"
trap 'rm -rf "$prefix" "$out"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$src/examples/embed" -B "$out" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$out" -j 2 >/dev/null
test -x "$out/embed_example"
echo "embed example built against the installed package"
