#!/usr/bin/python3
"""Reference files for circuit-tracer transcoders (tests/unit/test_transcoder.cpp), written with numpy only (neither
circuit-tracer nor the safetensors package is needed): per-layer files in circuit-tracer's layout, as its
SingleLayerTranscoder.to_safetensors writes them (W_enc (d_tc, d_model), W_dec (d_tc, d_model), b_enc (d_tc),
b_dec (d_model), activation_function.threshold (d_tc) for JumpReLU, W_skip (d_model, d_model)), a config.yaml, and
reference.json with inputs and the transcoder's outputs computed in float64 from the stored values, as circuit-tracer
defines them:
    pre = x @ W_enc.T + b_enc;  acts = pre * (pre > threshold) (JumpReLU) or relu(pre);
    out = acts @ W_dec + b_dec + x @ W_skip.T

layer_0: JumpReLU with a skip, F32. layer_1: ReLU without a skip, F16 (circuit-tracer accepts any dtype).

Run from the repository root; re-running writes identical files:
    /usr/bin/python3 tests/reference/transcoder_reference.py
"""
import json
import pathlib
import struct

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "transcoder"
D_MODEL, D_TC, N = 6, 10, 4
DTYPES = {np.float32: "F32", np.float16: "F16"}


def write_safetensors(path, tensors):
    """The safetensors layout by hand: u64 header length, JSON header padded with spaces to 8 bytes, raw data."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": DTYPES[array.dtype.type], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def forward(t, x):
    pre = x @ t["W_enc"].astype(np.float64).T + t["b_enc"].astype(np.float64)
    if "activation_function.threshold" in t:
        acts = pre * (pre > t["activation_function.threshold"].astype(np.float64))
    else:
        acts = np.maximum(pre, 0.0)
    out = acts @ t["W_dec"].astype(np.float64) + t["b_dec"].astype(np.float64)
    if "W_skip" in t:
        out = out + x @ t["W_skip"].astype(np.float64).T
    return pre, acts, out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(13)
    cases = {}
    for layer, (dtype, jump, skip) in enumerate([(np.float32, True, True), (np.float16, False, False)]):
        t = {"W_enc": rng.uniform(-0.6, 0.6, (D_TC, D_MODEL)).astype(dtype),
             "W_dec": rng.uniform(-0.5, 0.5, (D_TC, D_MODEL)).astype(dtype),
             "b_enc": rng.uniform(-0.2, 0.2, (D_TC,)).astype(dtype),
             "b_dec": rng.uniform(-0.2, 0.2, (D_MODEL,)).astype(dtype)}
        if jump:
            t["activation_function.threshold"] = rng.uniform(0.0, 0.3, (D_TC,)).astype(dtype)
        if skip:
            t["W_skip"] = rng.uniform(-0.3, 0.3, (D_MODEL, D_MODEL)).astype(dtype)
        write_safetensors(OUT / f"layer_{layer}.safetensors", t)
        x = rng.uniform(-1.0, 1.0, (N, D_MODEL)).astype(np.float32).astype(np.float64)
        pre, acts, out = forward(t, x)
        cases[f"layer_{layer}"] = {"dtype": DTYPES[dtype], "architecture": "jumprelu" if jump else "standard",
                                   "skip": skip, "d_model": D_MODEL, "d_tc": D_TC, "x": x.tolist(),
                                   "acts_pre": pre.tolist(), "acts_post": acts.tolist(), "output": out.tolist(),
                                   "active": int((acts != 0).sum())}
    (OUT / "reference.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
    (OUT / "config.yaml").write_text(
        "# circuit-tracer transcoder set (as in its configs/ and Hugging Face repos)\n"
        "model_kind: transcoder_set\n"
        "model_name: \"mechlens-reference\"\n"
        "feature_input_hook: \"ln2.hook_normalized\"\n"
        "feature_output_hook: 'hook_mlp_out'\n"
        "transcoders:\n"
        "  - layer_0.safetensors\n"
        "  - layer_1.safetensors\n")
    for name, c in cases.items():
        print(f"{name}: {c['dtype']} {c['architecture']}, skip {c['skip']}, {c['active']} of {N * D_TC} latents active")


if __name__ == "__main__":
    main()
