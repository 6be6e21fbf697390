#!/usr/bin/env python3
"""Checks the files `mechlens cache` writes, the way a Python user would read them (no torch, no safetensors package):

1. the .safetensors file with the standard library only (struct + json): layout, header, dtype, offsets, values;
2. the same file with numpy (numpy.frombuffer), which must give exactly the standard-library values;
3. the .npy files (one per hook name) with numpy.load, which must equal the safetensors tensors exactly;
4. every tensor that has a PyTorch reference fixture against it, within the tolerance (masked -inf scores must be
   -inf in both), and every fixture must have its tensor.

Usage: check_cache_files.py FILE.safetensors NPY_DIR FIXTURE_DIR [TOLERANCE]
"""
import ast
import json
import math
import os
import struct
import sys

import numpy as np

NOT_ACTIVATIONS = {"tokens", "greedy"}


def fail(message):
    sys.exit(f"FAIL: {message}")


def unique_object(pairs):
    """json object hook that rejects duplicate keys, as the safetensors format requires."""
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        fail(f"duplicate keys in the safetensors header: {keys}")
    return dict(pairs)


def read_safetensors_stdlib(path):
    """Returns (metadata, {name: (shape, values tuple, byte offset)}) using only struct and json."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        fail(f"{path}: shorter than the 8-byte header length")
    (header_length,) = struct.unpack_from("<Q", data, 0)
    if header_length % 8 != 0:
        fail(f"{path}: header length {header_length} is not a multiple of 8")
    if 8 + header_length > len(data):
        fail(f"{path}: header length {header_length} runs past the end of the file")
    header_text = data[8:8 + header_length].decode("utf-8")
    if not header_text.startswith("{"):
        fail(f"{path}: header does not start with '{{'")
    header = json.loads(header_text, object_pairs_hook=unique_object)
    metadata = header.pop("__metadata__", {})
    if metadata.get("format") != "mechlens":
        fail(f"{path}: __metadata__ is {metadata}, expected format 'mechlens'")
    start = 8 + header_length
    body = len(data) - start
    tensors, spans = {}, []
    for name, entry in header.items():
        if set(entry) != {"dtype", "shape", "data_offsets"}:
            fail(f"{name}: unexpected fields {sorted(entry)}")
        if entry["dtype"] != "F32":
            fail(f"{name}: dtype {entry['dtype']}, expected F32")
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        count = math.prod(shape)
        if end - begin != 4 * count or not 0 <= begin <= end <= body:
            fail(f"{name}: data_offsets [{begin}, {end}) do not hold shape {shape} inside {body} bytes")
        if (start + begin) % 4 != 0:
            fail(f"{name}: data starts at file offset {start + begin}, not float-aligned")
        tensors[name] = (shape, struct.unpack_from(f"<{count}f", data, start + begin), start + begin)
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            fail(f"{path}: tensors do not tile the data (gap or overlap at {begin})")
        position = end
    if position != body:
        fail(f"{path}: {body - position} bytes after the last tensor")
    return metadata, tensors


def read_npy_stdlib(path):
    """A float32/int32 .npy (version 1 or 2, C order, little-endian) read with struct: (shape, values)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        fail(f"{path}: not a .npy file")
    if data[6] == 1:
        (length,) = struct.unpack_from("<H", data, 8)
        start = 10
    else:
        (length,) = struct.unpack_from("<I", data, 8)
        start = 12
    header = ast.literal_eval(data[start:start + length].decode("latin1"))
    shape = tuple(header["shape"])
    code = {"<f4": "f", "<i4": "i"}[header["descr"]]
    return shape, struct.unpack_from(f"<{math.prod(shape)}{code}", data, start + length)


def max_difference(actual, expected):
    """Largest |a - b|; equal infinities count as 0, any other non-finite pair as infinity."""
    worst = 0.0
    for a, b in zip(actual, expected):
        if math.isinf(a) and a == b:
            continue
        d = abs(a - b)
        worst = max(worst, d if math.isfinite(d) else math.inf)
    return worst


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    path, npy_dir, fixture_dir = sys.argv[1:4]
    tolerance = float(sys.argv[4]) if len(sys.argv) == 5 else 1e-4

    metadata, tensors = read_safetensors_stdlib(path)
    if not tensors:
        fail(f"{path}: no tensors")
    raw = open(path, "rb").read()
    compared = 0
    for name, (shape, values, offset) in tensors.items():
        # numpy reads the same bytes to the same values, bit for bit.
        array = np.frombuffer(raw, dtype="<f4", count=math.prod(shape), offset=offset).reshape(shape)
        if array.tobytes() != struct.pack(f"<{len(values)}f", *values):
            fail(f"{name}: numpy.frombuffer and struct disagree")
        from_npy = np.load(os.path.join(npy_dir, name + ".npy"))
        if from_npy.dtype != np.float32 or from_npy.shape != shape or from_npy.tobytes() != array.tobytes():
            fail(f"{name}: the .npy file ({from_npy.dtype}, {from_npy.shape}) differs from the safetensors tensor")

        fixture = os.path.join(fixture_dir, "logits.npy" if name == "unembed.hook_out" else name + ".npy")
        if not os.path.exists(fixture):
            continue
        ref_shape, ref_values = read_npy_stdlib(fixture)
        if ref_shape != shape:
            fail(f"{name}: shape {shape}, reference {ref_shape}")
        stdlib_error = max_difference(values, ref_values)
        reference = np.load(fixture)
        if not np.array_equal(np.isinf(array), np.isinf(reference)):
            fail(f"{name}: -inf entries differ from the reference")
        finite = ~np.isinf(reference)
        numpy_error = float(np.max(np.abs(array[finite] - reference[finite]), initial=0.0))
        if stdlib_error > tolerance or numpy_error > tolerance:
            fail(f"{name}: max abs difference {max(stdlib_error, numpy_error):.3g} exceeds {tolerance}")
        compared += 1

    fixtures = [f[:-4] for f in os.listdir(fixture_dir) if f.endswith(".npy") and f[:-4] not in NOT_ACTIVATIONS]
    missing = [f for f in fixtures if (f if f != "logits" else "unembed.hook_out") not in tensors]
    if missing:
        fail(f"{len(missing)} fixtures have no tensor in {path}, e.g. {sorted(missing)[:3]}")
    print(f"{path}: {len(tensors)} F32 tensors, metadata {metadata}; read identically by struct, numpy.frombuffer "
          f"and numpy.load; {compared} equal the PyTorch reference within {tolerance}")
    print("PASS")


if __name__ == "__main__":
    main()
