#!/usr/bin/env python3
"""Writes the Hugging Face reference fixtures under tests/data/.

For each case it makes a model directory with conveyor-make-model, loads it with transformers
(LlamaForCausalLM / Qwen2ForCausalLM, float64, eager attention), and stores:
  <name>.json        how the model was made, the prompt, the greedy continuation, file checksum
  <name>.logits.npy  float32 logits [prompt_len + max_new_tokens - 1, vocab]: one row per prompt
                     position, then one per decode step (teacher-forced on the greedy tokens)

CI does not run this (it needs torch); tests/cpu/test_hf_reference.cpp reads the fixtures.
Usage: python tests/reference/hf_reference.py --make-model build/examples/conveyor-make-model
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers

CASES = [
    # name, conveyor-make-model arguments
    ("tiny_llama_gqa", ["--preset", "tiny", "--arch", "llama", "--seed", "11"]),
    ("tiny_llama_tied_llama3", ["--preset", "tiny", "--arch", "llama", "--tie-embeddings",
                                "--rope-scaling", "llama3", "--seed", "12"]),
    ("tiny_qwen2_bias", ["--preset", "tiny", "--arch", "qwen2", "--seed", "13"]),
]
PROMPT = [1, 17, 250, 3, 99, 400, 7, 7, 128, 64, 311]
MAX_NEW_TOKENS = 8


def fnv1a_64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def make_case(make_model: str, out_dir: pathlib.Path, name: str, args: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([make_model, "--out", tmp] + args, check=True, stdout=subprocess.DEVNULL)
        model_dir = pathlib.Path(tmp)
        config = json.loads((model_dir / "config.json").read_text())
        model = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, torch_dtype=torch.float64, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            prompt = torch.tensor([PROMPT])
            generated = model.generate(prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                       eos_token_id=None, pad_token_id=0)
            tokens = generated[0, len(PROMPT):].tolist()
            # Teacher-forced logits of the prompt and of every decode step.
            full = torch.tensor([PROMPT + tokens[:-1]])
            logits = model(full).logits[0].to(torch.float32).numpy()
        checksum = fnv1a_64((model_dir / "model.safetensors").read_bytes())
    np.save(out_dir / f"{name}.logits.npy", logits)
    fixture = {
        "name": name,
        "make_model_args": args,
        "architecture": config["architectures"][0],
        "prompt": PROMPT,
        "greedy_tokens": tokens,
        "logits_rows": int(logits.shape[0]),
        "vocab_size": int(logits.shape[1]),
        "safetensors_fnv1a64": f"{checksum:016x}",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(fixture, indent=2) + "\n")
    print(f"{name}: {config['architectures'][0]}, tokens {tokens}, logits {logits.shape}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-model", required=True, help="path to conveyor-make-model")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parents[1] / "data"))
    args = parser.parse_args()
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, make_args in CASES:
        make_case(args.make_model, out_dir, name, make_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
