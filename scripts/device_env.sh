# Sourced by the scripts/device_*.sh that run on the GPU machine: the carry folder, the CUDA
# libraries' path, the /work/main link the dev box's binaries expect (they were compiled with
# AGENTRT_SOURCE_DIR=/work/main: fixture paths), and the carried binaries unpacked where they
# came packed (scripts/device_carry.sh --binaries --pack: the carry holds 64 MiB, and two test
# binaries and three benchmark binaries are more than that unpacked).
CARRY=.device-carry-cuda
CUDA_LIBS=$(dirname "$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$CARRY/lib:${CUDA_LIBS}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
if [[ ! -e /work/main ]]; then mkdir -p /work && ln -s "$PWD" /work/main; fi
if [[ -e $CARRY/bins.tar.xz && ! $CARRY/bins.tar.xz -ot $CARRY/.unpacked ]]; then
  tar xJf "$CARRY/bins.tar.xz" -C "$CARRY" && touch "$CARRY/.unpacked"
fi
