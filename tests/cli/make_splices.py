#!/usr/bin/env python3
"""Writes the SAEs and the transcoder the CLI tests splice into stories260K (d_model 64, 5 layers), with the standard library only:
  OUT/sae_resid/          SAELens folder, standard, d_in 64, d_sae 128, hook blocks.1.hook_resid_post
  OUT/sae_wrong_hook/     the same SAE at blocks.9.hook_resid_post (not a site of the model)
  OUT/sae_wrong_width/    d_in 32 at blocks.1.hook_resid_post (the site has width 64)
  OUT/transcoder/         circuit-tracer folder: config.yaml and layer_2.safetensors (ReLU, d_tc 96, with W_skip)
Usage: make_splices.py OUT"""
import json
import pathlib
import random
import struct
import sys


class Normal:
    """Seeded Gaussian draws as (shape, flat values) pairs."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def normal(self, mean, sigma, shape):
        count = 1
        for n in shape:
            count *= n
        return shape, [self.rng.gauss(mean, sigma) for _ in range(count)]


def write_safetensors(path, tensors):
    """The safetensors layout by hand: u64 header length, JSON header padded to 8 bytes, float32 data."""
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in tensors.items():
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def sae_folder(out, name, hook, d_in, d_sae, rng):
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.0.0", "hook_name": hook, "hook_head_index": None,
                        "model_name": "stories260K"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    write_safetensors(folder / "sae_weights.safetensors", {
        "W_enc": rng.normal(0, 0.3, (d_in, d_sae)), "W_dec": rng.normal(0, 0.3, (d_sae, d_in)),
        "b_enc": rng.normal(0, 0.1, (d_sae,)), "b_dec": rng.normal(0, 0.1, (d_in,))})


def main():
    out = pathlib.Path(sys.argv[1])
    rng = Normal(5)
    sae_folder(out, "sae_resid", "blocks.1.hook_resid_post", 64, 128, rng)
    sae_folder(out, "sae_wrong_hook", "blocks.9.hook_resid_post", 64, 128, rng)
    sae_folder(out, "sae_wrong_width", "blocks.1.hook_resid_post", 32, 128, rng)
    tc = out / "transcoder"
    tc.mkdir(parents=True, exist_ok=True)
    (tc / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: \"ln2.hook_normalized\"\n"
                                    "feature_output_hook: \"hook_mlp_out\"\n")
    write_safetensors(tc / "layer_2.safetensors", {
        "W_enc": rng.normal(0, 0.3, (96, 64)), "W_dec": rng.normal(0, 0.3, (96, 64)),
        "b_enc": rng.normal(0, 0.1, (96,)), "b_dec": rng.normal(0, 0.1, (64,)),
        "W_skip": rng.normal(0, 0.1, (64, 64))})
    print(f"wrote SAEs and a transcoder under {out}")


if __name__ == "__main__":
    main()
