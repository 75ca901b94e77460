#!/usr/bin/env bash
# Install torch (the analysis and train extras need it) with the Python given as $1; further
# arguments go to pip (tests pass --dry-run --report FILE to see what would be installed).
#
# Without an NVIDIA GPU (no working `nvidia-smi`) this takes the CPU build from PyTorch's CPU
# index: the default index (PyPI) serves the CUDA build on Linux, which pulls about 20 nvidia-*
# packages (several GB) that a CPU machine cannot use. With a GPU it takes the default index's
# CUDA build. Override the choice with INSTRUCTFORGE_TORCH=cpu or INSTRUCTFORGE_TORCH=cuda; for
# another CUDA version install torch yourself first (install.sh keeps an installed torch), e.g.
#   .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu126
# TORCH_CPU_INDEX replaces the CPU index (a mirror of it).
set -euo pipefail
py="$1"
shift
version=2.13.0
cpu_index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
pip=("$py" -m pip install --disable-pip-version-check "$@")
build="${INSTRUCTFORGE_TORCH:-}"
if [ -z "$build" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    build=cuda
  else
    build=cpu
  fi
fi
case "$build" in
  cuda)
    echo "install-torch: NVIDIA GPU found: torch $version CUDA build from the default index" >&2
    "${pip[@]}" "torch==$version"
    ;;
  cpu)
    echo "install-torch: no NVIDIA GPU: torch $version CPU build from $cpu_index" \
      "(for the GPU build: INSTRUCTFORGE_TORCH=cuda)" >&2
    # The CPU index also serves torch's dependencies. Where it cannot be reached, a mirror or
    # wheel folder of the configured indexes may still hold the CPU build (+cpu); never fall
    # back to the plain version, which is the CUDA build.
    # One retry only: where the index cannot be resolved at all, pip's default five retries
    # per package cost minutes before the next attempt.
    "${pip[@]}" "torch==$version" --index-url "$cpu_index" --retries 1 --timeout 20 \
      || "${pip[@]}" "torch==$version+cpu" \
      || { echo "install-torch: could not install the CPU build of torch $version from" \
             "$cpu_index or the configured indexes; set TORCH_CPU_INDEX to a mirror, or" \
             "INSTRUCTFORGE_TORCH=cuda to take the CUDA build (several GB)" >&2; exit 1; }
    ;;
  *)
    echo "install-torch: INSTRUCTFORGE_TORCH must be cpu or cuda, got '$build'" >&2
    exit 2
    ;;
esac
