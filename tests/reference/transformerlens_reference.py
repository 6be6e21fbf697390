#!/usr/bin/python3
"""Independent PyTorch reference of the four trained TransformerLens models in ../shared/models/arena.

For each model this script loads the state dict with torch.load, runs one input through a forward pass written
from TransformerLens's maths (no TransformerLens code), in float64 from the float32 weights, and writes
`fixtures/transformerlens/<model>.safetensors` holding the input tokens, the logits and the activations under
TransformerLens hook names (batch axis kept), plus the config as metadata. The C++ test `[transformerlens]` loads
the model with mechlens and compares every stored site within 1e-4. Run with Debian's python:

    /usr/bin/python3 tests/reference/transformerlens_reference.py [--models ../shared/models]

Conventions (mechlens's, where TransformerLens differs they are noted):
- LN: centred = x - mean(x), scale = sqrt(mean(centred^2) + eps) (`ln*.hook_scale`), normalized = centred / scale
  (`ln*.hook_normalized`, before the gain: TransformerLens's hook_normalized is after gain and bias unless the
  model was loaded with fold_ln), output = normalized * w + b.
- Attention: q = x W_Q + b_Q per head (`attn.hook_q` (pos, head, d_head)), likewise k and v; scores = q.k /
  sqrt(d_head), causal mask with -inf (`attn.hook_attn_scores`), softmax (`attn.hook_pattern` (head, q, k)),
  z = pattern v (`attn.hook_z`), attn_out = sum_h z_h W_O[h] + b_O (`hook_attn_out`).
- MLP (cumsum only): pre = x W_in + b_in, post = relu(pre), out = post W_out + b_out.
- Logits = final W_U + b_U; d_vocab_out may differ from d_vocab (the classifiers).
Inputs (fixed, and valid for each task): sorted_list a shuffled list then SEP then the sorted list; sum two
4-digit numbers; palindrome START, a palindrome of 20 values, END; cumsum 20 values.
"""

import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch

MODELS = {
    "sorted_list": ("sorted_list_model.pt", "d981231d29a5102377f0f3e936895980a76bea719f78b4d02ab191b84f0d50e3"),
    "sum": ("sum_model.pt", "d18404bb039f42c62f1f23b78ba858a5d24d2af12ec224e249a9d88d46d6c21a"),
    "palindrome": ("palindrome_classifier.pt", "2e02564bcfab9028e9b86c96ab030c2235d60e7e2043cc29d69b473998038936"),
    "cumsum": ("cumsum_model.pt", "0acc75629bf0dd3ec8a2300ec567a2b9b05414c45a768239f7a811f791a2f02e"),
}


def task_input(name, rng):
    """One valid input sequence of each task (see the ARENA datasets)."""
    if name == "sorted_list":
        values = rng.permutation(51)[:10]
        return list(values) + [51] + sorted(values)
    if name == "sum":
        a = [int(rng.randint(0, 5))] + list(rng.randint(0, 10, 3))
        b = [int(rng.randint(0, 5))] + list(rng.randint(0, 10, 3))
        total = int("".join(map(str, a))) + int("".join(map(str, b)))
        return a + [10] + b + [11] + [int(d) for d in f"{total:04d}"]
    if name == "palindrome":
        half = list(rng.randint(0, 31, 10))
        return [31] + half + half[::-1] + [32]
    if name == "cumsum":
        return list(rng.randint(0, 11, 20))
    raise ValueError(name)


def forward(cfg, sd, tokens, dtype=torch.float64):
    """TransformerLens's forward pass in `dtype`; returns (logits (pos, vocab_out), {hook: activation})."""
    W = {k: v.to(dtype) for k, v in sd.items() if v.dtype == torch.float32}
    eps = cfg["eps"]
    n_heads, d_head = cfg["n_heads"], cfg["d_head"]
    toks = torch.tensor(tokens)
    pos = len(tokens)
    acts = {}

    def norm(x, prefix, hook):
        if cfg["normalization_type"] is None:
            return x
        centred = x - x.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        normalized = centred / scale
        acts[hook + ".hook_scale"] = scale
        acts[hook + ".hook_normalized"] = normalized
        return normalized * W[prefix + ".w"] + W[prefix + ".b"]

    embed = W["embed.W_E"][toks]
    pos_embed = W["pos_embed.W_pos"][:pos]
    acts["hook_embed"], acts["hook_pos_embed"] = embed, pos_embed
    x = embed + pos_embed
    for layer in range(cfg["n_layers"]):
        p = f"blocks.{layer}."
        acts[p + "hook_resid_pre"] = x
        xn = norm(x, p + "ln1", p + "ln1")
        q = torch.einsum("pd,hde->phe", xn, W[p + "attn.W_Q"]) + W[p + "attn.b_Q"]
        k = torch.einsum("pd,hde->phe", xn, W[p + "attn.W_K"]) + W[p + "attn.b_K"]
        v = torch.einsum("pd,hde->phe", xn, W[p + "attn.W_V"]) + W[p + "attn.b_V"]
        acts[p + "attn.hook_q"], acts[p + "attn.hook_k"], acts[p + "attn.hook_v"] = q, k, v
        scores = torch.einsum("qhe,khe->hqk", q, k) / np.sqrt(d_head)
        future = torch.triu(torch.ones(pos, pos, dtype=torch.bool), 1)
        scores = scores.masked_fill(future, float("-inf"))
        acts[p + "attn.hook_attn_scores"] = scores
        pattern = scores.softmax(-1)
        acts[p + "attn.hook_pattern"] = pattern
        z = torch.einsum("hqk,khe->qhe", pattern, v)
        acts[p + "attn.hook_z"] = z
        attn_out = torch.einsum("qhe,hed->qd", z, W[p + "attn.W_O"]) + W[p + "attn.b_O"]
        acts[p + "hook_attn_out"] = attn_out
        x = x + attn_out
        if not cfg["attn_only"]:
            acts[p + "hook_resid_mid"] = x
            xn = norm(x, p + "ln2", p + "ln2")
            pre = xn @ W[p + "mlp.W_in"] + W[p + "mlp.b_in"]
            assert cfg["act_fn"] == "relu"
            post = pre.clamp(min=0.0)
            acts[p + "mlp.hook_pre"], acts[p + "mlp.hook_post"] = pre, post
            mlp_out = post @ W[p + "mlp.W_out"] + W[p + "mlp.b_out"]
            acts[p + "hook_mlp_out"] = mlp_out
            x = x + mlp_out
        acts[p + "hook_resid_post"] = x
    xn = norm(x, "ln_final", "ln_final")
    logits = xn @ W["unembed.W_U"] + W["unembed.b_U"]
    acts["unembed.hook_out"] = logits
    return logits, acts


def write_safetensors(path, tensors, metadata):
    """float32 tensors after an 8-byte header length and the JSON header padded with spaces to a multiple of 8."""
    header = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, array in tensors:
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_models = os.environ.get("MECHLENS_MODELS", os.path.join(here, "..", "..", "..", "shared", "models"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=default_models)
    parser.add_argument("--out", default=os.path.join(here, "fixtures", "transformerlens"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    for index, (name, (file, sha)) in enumerate(sorted(MODELS.items())):
        folder = os.path.join(args.models, "arena", name)
        path = os.path.join(folder, file)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != sha:
            sys.exit(f"transformerlens_reference.py: {path} has sha256 {digest}, expected {sha}")
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        sd = torch.load(path, map_location="cpu")
        rng = np.random.RandomState(2000 + index)
        tokens = [int(t) for t in task_input(name, rng)]
        logits, acts = forward(cfg, sd, tokens)
        # The float32 run of the same maths agrees with float64 (a sanity check of the reference itself).
        logits32, _ = forward(cfg, sd, tokens, torch.float32)
        drift = float((logits32.to(torch.float64) - logits).abs().max())
        if drift > 1e-3:
            sys.exit(f"{name}: float32 and float64 logits differ by {drift}")

        tensors = [("tokens", np.array([tokens], dtype=np.float32)), ("logits", logits.numpy()[None])]
        for hook in sorted(acts):
            tensors.append((hook, acts[hook].numpy()[None]))
        metadata = {"model": f"arena/{name}/{file}", "sha256": sha, "tokens": ",".join(map(str, tokens)),
                    "generator": "tests/reference/transformerlens_reference.py (torch float64, TransformerLens maths)",
                    "torch": torch.__version__}
        out = os.path.join(args.out, name + ".safetensors")
        write_safetensors(out, tensors, metadata)
        prediction = logits.argmax(-1).tolist()
        print(f"{name}: {len(tensors)} tensors, {os.path.getsize(out)} bytes, tokens {tokens}, argmax {prediction}, "
              f"float32 drift {drift:.2g}")


if __name__ == "__main__":
    main()
