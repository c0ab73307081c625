#!/usr/bin/env python3
"""Encoding throughput of Hugging Face `tokenizers` on ~1 MB of mixed text, single-threaded: the
baseline for conveyor's C++ tokenizer benchmark.

The tokenizer is the SmolLM2 one, assembled from the GGUF vocabulary exactly as the test fixtures do
(tests/reference/tokenizer_reference.py: byte-level BPE, Digits(individual) + ByteLevel(GPT-2 regex),
17 special tokens). The text is built deterministically here (no input files) from a fixed mix of
English prose, code, numbers, CJK, other scripts and emoji; `--write-text PATH` writes the same bytes
so the C++ benchmark can encode exactly them.

What is timed (`--mode whole`, the default): one `Tokenizer.encode(text, add_special_tokens=False)` call
on the whole text (a single sequence, so no batch parallelism). `--mode lines` instead calls `encode` in a
Python loop on each line (newline kept); that gives slightly different ids, since "\n\n" no longer merges
across lines. RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false are set before the library loads. 5 timed runs after one untimed warm-up run; the median is reported. HF's BPE keeps a
word cache (10,000 entries by default) that is warm after the first run; `--bpe-cache 0` disables it.

    python benchmarks/tokenizer_bench_hf.py [--cache DIR] [--write-text PATH] [--runs 5] [--bpe-cache N]
                                            [--mode whole|lines]

Prints one JSON object.
"""

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.dont_write_bytecode = True  # keep tests/reference free of __pycache__
sys.path.insert(0, str(REPO / "tests" / "reference"))
import tokenizer_reference as ref  # noqa: E402

TARGET_BYTES = 1_000_000

CHUNKS = [
    # English prose
    "The committee met on Tuesday to review the quarterly figures. Revenue rose 12% year over year, "
    "while costs held steady; nobody expected the new warehouse to open before the spring. ",
    "She didn't think they'd've finished by noon, but the crew worked through lunch and we're told "
    "it's done. \"Remarkable,\" said the foreman, wiping his hands. ",
    "In 1969, Apollo 11 landed on the Moon. Neil Armstrong's first words were broadcast to roughly "
    "650 million people around the world.\n\n",
    # code
    "def fibonacci(n: int) -> list[int]:\n    seq = [0, 1]\n    while len(seq) < n:\n"
    "        seq.append(seq[-1] + seq[-2])\n    return seq[:n]\n\n",
    "for (std::size_t i = 0; i < rows; ++i) {\n    acc[i] += weights[i * cols + j] * x[j];  // GEMV\n}\n",
    "SELECT id, name, created_at FROM users WHERE status = 'active' ORDER BY created_at DESC LIMIT 50;\n",
    '{"model": "smollm2", "layers": 30, "heads": [9, 3], "rope_theta": 100000.0, "tied": true}\n',
    # numbers
    "3.14159265358979 2.71828182845904 1.41421356237309 6.02214076e23 0xDEADBEEF 1,234,567.89 "
    "2024-07-26T12:34:56Z +1 (555) 010-9999\n",
    # CJK and other scripts
    "我们正在测试分词器的速度，这段文字包含汉字、标点符号和数字２０２５。",
    "東京の天気は晴れです。カタカナとひらがなが混ざっています。",
    "한국어 문장도 포함되어 있습니다. 토크나이저 성능을 측정합니다. ",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Ελληνικά κείμενα εδώ. ",
    "مرحبا بالعالم، هذا نص عربي. नमस्ते दुनिया, यह हिन्दी है। ",
    # emoji and symbols
    "Launch 🚀 went well 👍🏽 — the team 👨‍👩‍👧 celebrated 🎉 with ☕ and 🍰! ✅ ❤️ ™ © ° ± × ÷ → ∞\n",
    # whitespace-heavy
    "    indented line\n\t\ttabbed line\n\n\n   trailing spaces   \n",
]


def build_text() -> str:
    """Deterministic ~1 MB (UTF-8) mix: chunks chosen by a fixed linear congruential generator."""
    state = 20250115
    parts: list[str] = []
    size = 0
    while size < TARGET_BYTES:
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        chunk = CHUNKS[(state >> 33) % len(CHUNKS)]
        parts.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ref.DEFAULT_CACHE)
    ap.add_argument("--write-text", type=Path, help="write the benchmark text (UTF-8) here")
    ap.add_argument("--write-ids", type=Path, help="write the ids of the whole text (JSON list) here")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bpe-cache", type=int, default=None, help="HF BPE word cache entries (0 = off)")
    ap.add_argument("--mode", choices=("whole", "lines"), default="whole")
    args = ap.parse_args()

    text = build_text()
    data = text.encode("utf-8")
    if args.write_text:
        args.write_text.parent.mkdir(parents=True, exist_ok=True)
        args.write_text.write_bytes(data)

    gguf_path = args.cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf_path.exists():
        print(f"{gguf_path} missing: run scripts/fetch-assets.sh smollm2", file=sys.stderr)
        return 1
    tok = ref.build_bytelevel_from_gguf(ref.GgufVocab.load(gguf_path), cache_capacity=args.bpe_cache)

    if args.mode == "whole":
        def run() -> int:
            return len(tok.encode(text, add_special_tokens=False).ids)
        call = "Tokenizer.encode(whole text, add_special_tokens=False), one call per run"
    else:
        lines = text.splitlines(keepends=True)

        def run() -> int:
            return sum(len(tok.encode(line, add_special_tokens=False).ids) for line in lines)
        call = f"Tokenizer.encode(line, add_special_tokens=False) in a Python loop over {len(lines)} lines"
    n_tokens = run()  # warm-up (and the token count)
    if args.write_ids:
        args.write_ids.write_text(json.dumps(tok.encode(text, add_special_tokens=False).ids))
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "benchmark": "tokenizer_encode_hf",
        "tokenizer": "SmolLM2 (GGUF vocabulary, HF tokenizers BPE)",
        "call": call,
        "threads": 1,
        "tokenizers": metadata.version("tokenizers"),
        "bpe_cache": "library default" if args.bpe_cache is None else args.bpe_cache,
        "bytes": len(data),
        "text_sha256": hashlib.sha256(data).hexdigest(),
        "tokens": n_tokens,
        "runs_s": [round(t, 6) for t in times],
        "median_s": round(med, 6),
        "mb_per_s": round(len(data) / 1e6 / med, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
