#!/usr/bin/env bash
# kiln's GPU check: every CUDA kernel against its CPU twin on fresh random
# inputs (sizes off the block size, one larger than a chunk, outputs
# poisoned twice), then the CPU on all cores against the GPU with its
# copies and the kernels alone, with the device's copy bandwidth measured
# first. A few minutes on one GPU; exit status 1 if any answer differs.
#
# The check is a small binary of kiln's GPU layer and CPU loops only (no
# DataFusion, about 1 MB, glibc and libm only; CUDA and NVRTC are loaded
# at run time), so it can be built on a machine without CUDA and brought
# to one without a Rust toolchain:
#
#   cargo build --release -p kiln-kernels --bin gpu-check     # 11 s cold on 2 cores
#   cp "${CARGO_TARGET_DIR:-target}/release/gpu-check" .gpu-check/
#   # on the GPU machine, from the repository root:
#   bash benches/gpu_check.sh .gpu-check/gpu-check
#
# Needs the NVIDIA driver (libcuda) and NVRTC 12 or 13 (the CUDA toolkit's,
# or pip's nvidia-cuda-nvrtc-cu12); this script finds the usual places.
set -euo pipefail
bin=${1:-.gpu-check/gpu-check}
[ -x "$bin" ] || { echo "gpu_check.sh: no executable at $bin (see the comment at the top)" >&2; exit 2; }

dirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] && dirs+=("$d")
done
if command -v python3 >/dev/null; then
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
  for d in "$site/nvidia/cuda_nvrtc/lib" "$site/nvidia/cu13/lib"; do
    [ -d "$d" ] && dirs+=("$d")
  done
fi
if [ ${#dirs[@]} -gt 0 ]; then
  LD_LIBRARY_PATH="$(IFS=:; echo "${dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
exec "$bin"
