#!/usr/bin/env python3
"""Writes a SAELens SAE folder (cfg.json + sae_weights.safetensors, SAELens 6 layout, F32) for the CLI tests, with
the Python standard library only.

usage: make_sae_folder.py OUT_DIR --kind random|identity --d-in 64 [--d-sae 128] [--hook NAME] [--seed 0]

random:   W_enc, W_dec uniform in [-0.5, 0.5) / sqrt(d_in), b_enc uniform in [-0.1, 0.1), b_dec 0
identity: d_sae = 2 d_in, W_enc = [I, -I], W_dec = [I; -I], biases 0: relu(x) - relu(-x) = x exactly
"""
import argparse
import json
import math
import os
import random
import struct


def safetensors_bytes(tensors):
    """tensors: list of (name, shape, flat list of floats) -> the file's bytes (F32, little-endian)."""
    header, blobs, offset = {}, [], 0
    for name, shape, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kind", choices=["random", "identity"], required=True)
    p.add_argument("--d-in", type=int, required=True)
    p.add_argument("--d-sae", type=int, default=0)
    p.add_argument("--hook", default="blocks.2.hook_resid_post")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    d_in = a.d_in
    if a.kind == "identity":
        d_sae = 2 * d_in
        w_enc = [0.0] * (d_in * d_sae)
        w_dec = [0.0] * (d_sae * d_in)
        for i in range(d_in):
            w_enc[i * d_sae + i] = 1.0
            w_enc[i * d_sae + d_in + i] = -1.0
            w_dec[i * d_in + i] = 1.0
            w_dec[(d_in + i) * d_in + i] = -1.0
        b_enc = [0.0] * d_sae
    else:
        d_sae = a.d_sae or 2 * d_in
        rng = random.Random(a.seed)
        scale = 1.0 / math.sqrt(d_in)
        w_enc = [scale * (rng.random() - 0.5) for _ in range(d_in * d_sae)]
        w_dec = [scale * (rng.random() - 0.5) for _ in range(d_sae * d_in)]
        b_enc = [0.2 * (rng.random() - 0.5) for _ in range(d_sae)]
    b_dec = [0.0] * d_in
    cfg = {
        "architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"hook_name": a.hook, "hook_head_index": None, "model_name": "stories260K",
                     "sae_lens_version": "6.0.0", "written_by": "tests/cli/make_sae_folder.py"},
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(a.out, "sae_weights.safetensors"), "wb") as f:
        f.write(safetensors_bytes([("W_enc", (d_in, d_sae), w_enc), ("W_dec", (d_sae, d_in), w_dec),
                                   ("b_enc", (d_sae,), b_enc), ("b_dec", (d_in,), b_dec)]))
    print("wrote %s: %s SAE, d_in %d, d_sae %d, at %s" % (a.out, a.kind, d_in, d_sae, a.hook))


if __name__ == "__main__":
    main()
