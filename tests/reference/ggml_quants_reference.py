#!/usr/bin/env python3
"""Writes tests/reference/fixtures/ggml_quants/blocks.gguf: random blocks of every GGUF tensor type mechlens
dequantises, each beside the float32 values llama.cpp's own Python package (gguf-py) decodes them to.

The blocks are random bytes (every bit of every field exercised), with finite half-precision scales. Two references
must agree bit for bit before anything is written:
  1. gguf-py's dequantize() from a llama.cpp checkout (its reference dequantisers; --llama-cpp PATH), and
  2. this script's own decoder, written from the block layouts (ggml-common.h) below.
The file is a GGUF v3 of 2-D tensors: "<TYPE>.blocks" (the raw blocks, shape [512, 2]) and "<TYPE>.values" (F32).
It also holds "Q8_0.source" (F32) and "Q8_0.encoded", those floats as gguf-py's quantize() encodes them to Q8_0,
matched bit for bit by this script's own quantiser written from the maths of ggml's reference quantiser.

Usage (Debian's python3 with numpy; gguf-py imports sentencepiece, stubbed here when missing):
  /usr/bin/python3 tests/reference/ggml_quants_reference.py --llama-cpp /tmp/llama-src [--out DIR]
"""
import argparse
import os
import struct
import sys
import types

import numpy as np

QK = 32    # elements per block of the legacy types
QK_K = 256  # elements per super-block of the k-quants

# name: (ggml type number, elements per block, bytes per block)
TYPES = {
    "F16": (1, 1, 2),
    "BF16": (30, 1, 2),
    "Q4_0": (2, QK, 18),
    "Q4_1": (3, QK, 20),
    "Q5_0": (6, QK, 22),
    "Q5_1": (7, QK, 24),
    "Q8_0": (8, QK, 34),
    "Q4_K": (12, QK_K, 144),
    "Q5_K": (13, QK_K, 176),
    "Q6_K": (14, QK_K, 210),
}
# Byte offsets of the half-precision scales inside each block, kept finite.
HALF_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
ROW, ROWS = 512, 2


def random_blocks(rng, name):
    _, per_block, nbytes = TYPES[name]
    n_blocks = ROW * ROWS // per_block
    blocks = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    if name == "F16":
        v = (rng.standard_normal(ROW * ROWS) * 2.0).astype(np.float16)
        return v.view(np.uint8).reshape(n_blocks, nbytes)
    if name == "BF16":
        v = (rng.standard_normal(ROW * ROWS) * 2.0).astype(np.float32).view(np.uint32) >> 16
        return v.astype(np.uint16).view(np.uint8).reshape(n_blocks, nbytes)
    for off in HALF_FIELDS[name]:
        sign = rng.choice([-1.0, 1.0], size=n_blocks)
        h = (sign * rng.uniform(1e-3, 1.0, size=n_blocks)).astype(np.float16)
        blocks[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def half(blocks, off):
    return blocks[:, off:off + 2].copy().view(np.float16).astype(np.float32).reshape(-1)


def k_scales(s):
    """The 6-bit scales and minimums of Q4_K / Q5_K: 12 bytes -> 8 of each."""
    sc = np.zeros((s.shape[0], 8), np.uint8)
    mn = np.zeros((s.shape[0], 8), np.uint8)
    for j in range(4):
        sc[:, j] = s[:, j] & 63
        mn[:, j] = s[:, j + 4] & 63
        sc[:, j + 4] = (s[:, j + 8] & 0x0F) | ((s[:, j] >> 6) << 4)
        mn[:, j + 4] = (s[:, j + 8] >> 4) | ((s[:, j + 4] >> 6) << 4)
    return sc, mn


def own_decode(name, blocks):
    """Element by element from the layouts; float32 arithmetic, never fused."""
    n = blocks.shape[0]
    f32 = np.float32
    if name == "F16":
        return blocks.copy().view(np.float16).astype(f32).reshape(-1)
    if name == "BF16":
        return (blocks.copy().view(np.uint16).astype(np.uint32) << 16).view(f32).reshape(-1)
    out = np.zeros((n, TYPES[name][1]), f32)
    if name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        d = half(blocks, 0)
        has_min = name.endswith("_1")
        m = half(blocks, 2) if has_min else None
        five = name.startswith("Q5")
        qh_at = 4 if has_min else 2
        qs_at = qh_at + (4 if five else 0)
        qh = blocks[:, qh_at:qh_at + 4].copy().view("<u4").reshape(-1) if five else None
        for j in range(QK):
            byte = blocks[:, qs_at + j % 16]
            q = (byte & 0x0F) if j < 16 else (byte >> 4)
            q = q.astype(np.int32)
            if five:
                q = q | (((qh >> j) & 1).astype(np.int32) << 4)
            if has_min:
                out[:, j] = d * q.astype(f32) + m
            else:
                out[:, j] = d * (q - (16 if five else 8)).astype(f32)
        return out.reshape(-1)
    if name == "Q8_0":
        d = half(blocks, 0)
        q = blocks[:, 2:34].copy().view(np.int8).astype(f32)
        return (q * d[:, None]).astype(f32).reshape(-1)
    if name in ("Q4_K", "Q5_K"):
        d, dmin = half(blocks, 0), half(blocks, 2)
        sc, mn = k_scales(blocks[:, 4:16])
        five = name == "Q5_K"
        qh = blocks[:, 16:48] if five else None
        qs = blocks[:, 48:176] if five else blocks[:, 16:144]
        for e in range(QK_K):
            sub, l = e // 32, e % 32
            byte = qs[:, 32 * (sub // 2) + l]
            q = ((byte & 0x0F) if sub % 2 == 0 else (byte >> 4)).astype(np.int32)
            if five:
                q = q | (((qh[:, l] >> sub) & 1).astype(np.int32) << 4)
            scale = (d * sc[:, sub].astype(f32)).astype(f32)
            minimum = (dmin * mn[:, sub].astype(f32)).astype(f32)
            out[:, e] = (scale * q.astype(f32)).astype(f32) - minimum
        return out.reshape(-1)
    if name == "Q6_K":
        ql, qh = blocks[:, 0:128], blocks[:, 128:192]
        scales = blocks[:, 192:208].copy().view(np.int8).astype(f32)
        d = half(blocks, 208)
        for e in range(QK_K):
            h, within = e // 128, e % 128
            low = ql[:, 64 * h + within % 64]
            low = (low & 0x0F) if within < 64 else (low >> 4)
            high = (qh[:, 32 * h + e % 32] >> (2 * ((e % 128) // 32))) & 3
            q = (low.astype(np.int32) | (high.astype(np.int32) << 4)) - 32
            out[:, e] = (d * scales[:, e // 16]).astype(f32) * q.astype(f32)
        return out.reshape(-1)
    raise ValueError(name)


def roundf(x):
    """C's roundf: to nearest, halves away from zero (float32 in, float32 out)."""
    a = np.abs(x)
    whole = np.floor(a)
    return (np.sign(x) * (whole + (a - whole >= 0.5))).astype(np.float32)


def own_quantize_q8_0(values):
    """Q8_0 from the maths of llama.cpp's reference quantiser: d = max|x| / 127 in float32, stored as a half;
    q = roundf(x * (1/d)) with 1/d from the float32 d; a block of zeros gets d = 0 and q = 0."""
    blocks = values.reshape(-1, QK).astype(np.float32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    inverse = np.where(d == 0, np.float32(0), np.float32(1) / np.where(d == 0, np.float32(1), d)).astype(np.float32)
    q = roundf((blocks * inverse[:, None]).astype(np.float32)).astype(np.int8)
    return np.concatenate([d.astype(np.float16)[:, None].view(np.uint8), q.view(np.uint8)], axis=1)


def q8_0_encoding_case(gguf):
    """Float rows for the Q8_0 encoder and their blocks as gguf-py's quantize() writes them (which that package
    states is bit-exact with ggml's reference quantiser), checked against own_quantize_q8_0 bit for bit. Blocks:
    zeros; one negative value alone; ties (max 127 makes d = 1, so x.5 rounds away from zero); scales from 1e-6
    (subnormal half d) to 1e3."""
    rng = np.random.default_rng(20261205)
    n_blocks = ROW * ROWS // QK
    scales = np.float32(10.0) ** rng.uniform(-6, 3, size=n_blocks).astype(np.float32)
    values = (rng.standard_normal((n_blocks, QK)).astype(np.float32) * scales[:, None]).astype(np.float32)
    values[0] = 0
    values[1] = 0
    values[1, 7] = -3.25
    values[2] = (np.arange(QK, dtype=np.float32) - 16) + np.float32(0.5)
    values[2, 0] = 127
    values = values.reshape(-1)
    reference = gguf.quants.quantize(values.reshape(ROWS, ROW), gguf.GGMLQuantizationType.Q8_0)
    reference = np.asarray(reference, dtype=np.uint8).reshape(n_blocks, 34)
    mine = own_quantize_q8_0(values)
    if not np.array_equal(reference, mine):
        bad = np.flatnonzero((reference != mine).any(axis=1))
        sys.exit(f"Q8_0 encoding: gguf-py and this script's quantiser differ in {bad.size} blocks, first {bad[0]}")
    print(f"Q8_0 encoding: {n_blocks} blocks, gguf-py and own quantiser agree bit for bit")
    return values, reference


def gguf_py_decode(gguf, name, blocks):
    qtype = gguf.GGMLQuantizationType[name]
    raw = np.ascontiguousarray(blocks).reshape(ROWS, -1)
    return np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(-1)


def write_gguf(path, tensors):
    """tensors: list of (name, ggml type, [ne0, ne1], bytes)."""
    align = 32
    def string(s):
        b = s.encode()
        return struct.pack("<Q", len(b)) + b
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1)
    head += string("general.architecture") + struct.pack("<I", 8) + string("mechlens-quant-fixture")
    offset = 0
    data = b""
    for name, t, dims, payload in tensors:
        head += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", t, offset)
        pad = (-len(payload)) % align
        data += payload + b"\0" * pad
        offset += len(payload) + pad
    head += b"\0" * ((-len(head)) % align)
    with open(path, "wb") as f:
        f.write(head + data)


def import_gguf_py(llama_cpp):
    """The `gguf` package of a llama.cpp checkout (gguf-py); it imports sentencepiece, stubbed when missing."""
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        sys.modules["sentencepiece"] = types.SimpleNamespace(SentencePieceProcessor=object)
    sys.path.insert(0, os.path.join(llama_cpp, "gguf-py"))
    import gguf
    return gguf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, help="a llama.cpp checkout (its gguf-py is the reference)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures", "ggml_quants"))
    args = ap.parse_args()
    gguf = import_gguf_py(args.llama_cpp)

    rng = np.random.default_rng(20261204)
    tensors = []
    for name, (t, per_block, nbytes) in TYPES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == (per_block, nbytes), name
        blocks = random_blocks(rng, name)
        reference = gguf_py_decode(gguf, name, blocks)
        mine = own_decode(name, blocks)
        if not np.array_equal(reference.view(np.uint32), mine.view(np.uint32)):
            bad = np.flatnonzero(reference.view(np.uint32) != mine.view(np.uint32))
            sys.exit(f"{name}: gguf-py and this script's decoder differ at {bad.size} elements, first {bad[0]}: "
                     f"{reference[bad[0]]!r} vs {mine[bad[0]]!r}")
        if not np.all(np.isfinite(reference)):
            sys.exit(f"{name}: non-finite values")
        print(f"{name}: {blocks.shape[0]} blocks, gguf-py and own decoder agree bit for bit; "
              f"|value| max {np.abs(reference).max():.4g}")
        tensors.append((f"{name}.blocks", t, [ROW, ROWS], blocks.tobytes()))
        tensors.append((f"{name}.values", 0, [ROW, ROWS], reference.astype("<f4").tobytes()))
    source, encoded = q8_0_encoding_case(gguf)
    tensors.append(("Q8_0.source", 0, [ROW, ROWS], source.astype("<f4").tobytes()))
    tensors.append(("Q8_0.encoded", TYPES["Q8_0"][0], [ROW, ROWS], encoded.tobytes()))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "blocks.gguf")
    write_gguf(path, tensors)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
