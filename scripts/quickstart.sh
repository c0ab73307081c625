#!/usr/bin/env bash
# Quick start: install dependencies, build, write a demo model and generate from it on 2 stages.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build --target conveyor-generate conveyor-make-model
./build/examples/conveyor-make-model --preset tiny --out demo-model --seed 1
./build/examples/conveyor-generate --model demo-model --prompt-ids 1,2,3,4,5 \
  --max-new-tokens 16 --stages 2 --timeline demo-model/timeline.svg
