#!/usr/bin/env bash
# Runs openai_client_test.py (the official OpenAI Python client, pinned, in a venv made here)
# against conveyor-serve with SmolLM2 on a free loopback port, then stops the server with
# SIGTERM and checks it exits 0. Exit 77 (CTest: skipped) only when the model file is missing
# or PyPI cannot be reached to install the client.
# Usage: run_openai_client.sh BINARY_DIR SOURCE_DIR
set -euo pipefail
binary_dir=$1
source_dir=$2
cache=${CONVEYOR_CACHE:-$HOME/.cache/conveyor}
model=$cache/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  echo "SKIP: $model is missing; fetch it with scripts/fetch-assets.sh smollm2"
  exit 77
fi

venv=$binary_dir/openai-client-venv
requirements=$source_dir/tests/serve/requirements-openai.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"; then
    if ! "$venv/bin/pip" download -q --no-deps -d "$venv/probe" openai==3.57.0 >/dev/null 2>&1; then
      echo "SKIP: PyPI is unreachable, so the openai client cannot be installed"
      exit 77
    fi
    echo "FAIL: installing the pinned openai client failed although PyPI answers"
    exit 1
  fi
  cp "$requirements" "$venv/requirements.txt"
fi

log=$(mktemp)
"$binary_dir/examples/conveyor-serve" --model "$model" --model-name smollm2 --port 0 \
  --stages 2 --max-batch 4 --max-context 512 --log-level warn >"$log" 2>&1 &
server=$!
cleanup() { kill -9 "$server" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's|.*on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$log" | head -n 1)
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "FAIL: conveyor-serve exited"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$log"; echo "FAIL: conveyor-serve did not start"; exit 1; }

"$venv/bin/python" "$source_dir/tests/serve/openai_client_test.py" "http://127.0.0.1:$port" smollm2

kill -TERM "$server"
status=0
wait "$server" || status=$?
cat "$log"
if [ "$status" -ne 0 ]; then
  echo "FAIL: conveyor-serve exited with $status after SIGTERM"
  exit 1
fi
echo "conveyor-serve stopped cleanly"
