#!/usr/bin/env bash
# Install InstructForge with its embedded CPU model and run the main job on the example file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Prints three sample answers, where the records are, and (the default model being
# SmolLM2-135M, a smoke-test model) how to name a real model.
.venv/bin/instructforge respond examples/instructions.jsonl -o runs/quickstart
