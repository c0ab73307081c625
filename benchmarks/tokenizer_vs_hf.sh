#!/usr/bin/env bash
# Tokenizer throughput, conveyor against Hugging Face tokenizers (Rust) in the same run, on the
# same ~1 MB text and the same SmolLM2 vocabulary, one thread each; checks that both give the same
# ids. Needs the smollm2 asset (scripts/fetch-assets.sh smollm2) and PyPI for the venv.
# Usage: benchmarks/tokenizer_vs_hf.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
cache="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}"
venv="${CONVEYOR_BENCH_VENV:-/tmp/conveyor-tokref}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r tests/reference/requirements-tokenizers.txt
cmake --build "$build" --target bench_tokenizer >/dev/null
hf=$("$venv/bin/python" -B benchmarks/tokenizer_bench_hf.py --cache "$cache" \
  --write-text "$work/text.txt" --write-ids "$work/ids.json")
ours=$("$build/benchmarks/bench_tokenizer" --model "$cache/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --text "$work/text.txt" --expect-ids "$work/ids.json")
echo "$hf"
echo "$ours"
python3 - "$hf" "$ours" <<'PY'
import json, sys
hf, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"| tokenizer | MB/s | tokens |\n|---|---|---|")
print(f"| HF tokenizers {hf['tokenizers']} | {hf['mb_per_s']:.2f} | {hf['tokens']} |")
print(f"| conveyor | {ours['mb_per_s']:.2f} | {ours['tokens']} |")
print(f"conveyor / HF = {ours['mb_per_s'] / hf['mb_per_s']:.2f}x, ids equal: {ours.get('ids_equal_to_reference')}")
PY
