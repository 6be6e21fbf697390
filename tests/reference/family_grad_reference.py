#!/usr/bin/python3
"""PyTorch autograd gradients and activation patching for the GPT-2-style and GPT-NeoX-style variant fixtures.

Reads `fixtures/variants/<name>.safetensors` (written by variants_reference.py: weights under mechlens's
`parameter_layout` names, the tokens, the config in `__metadata__`), runs the forward pass written again here in
PyTorch from the equations, in float64, and writes `fixtures/family_grad/<name>.safetensors` with
- `grad.<parameter>`: d metric / d parameter for every weight, and `grad.<hook name>`: d metric / d activation at the
  TransformerLens-named sites listed in GRAD_SITES, for two metrics (`ce.` mean next-token cross-entropy, `diff.`
  logits[last, A] - logits[last, B]);
- `patched.<case>`: the logits of the clean tokens when one activation is replaced by its value on the corrupt
  tokens (the cases in PATCHES), and `corrupt_tokens`.
Everything is stored as float32; the metric values are in the metadata. Run with Debian's python:

    /usr/bin/python3 tests/reference/family_grad_reference.py

Re-running writes byte-identical files. A built-in self-check compares sampled gradient entries against central
finite differences in float64.

Conventions (variants_reference.py's): LayerNorm centres, divides by sqrt(mean(centred^2) + eps) (hook_scale), then
gain and bias; learned positions, or rotary on the first rotary_dim dims of each head with split-halves pairing
(angle = pos * theta^(-2i/rotary_dim)); scores q.k / sqrt(d_head) with the causal mask; grouped keys/values;
biases on every linear; MLP activation gelu_new (tanh) or exact GELU; parallel blocks (GPT-NeoX): attention and MLP
both read hook_resid_pre and resid_post = (resid_pre + attn_out) + mlp_out.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

NAMES = ["gpt2_layer_learned", "neox_parallel_partial_rotary"]
DIFF_TOKENS = (3, 7)  # the `diff.` metric: logits[last, 3] - logits[last, 7]
CORRUPT_POSITIONS = {2: 5, 6: 1}  # position -> token id replacing the clean token there
# (case, site, layer, head or None, positions or None for all)
PATCHES = [("z_L0H1", "attn.hook_z", 0, 1, None), ("resid_pre_L1_p6", "hook_resid_pre", 1, None, [6]),
           ("mlp_out_L0", "hook_mlp_out", 0, None, None)]
GRAD_SITES = ["hook_embed", "hook_pos_embed", "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized",
              "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_pattern",
              "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
              "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post", "ln_final.hook_scale",
              "ln_final.hook_normalized"]
FD_SAMPLES, FD_EPS, FD_TOLERANCE = 6, 1e-6, 1e-6


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    metadata = header.pop("__metadata__", {})
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        assert info["dtype"] == "F32"
        tensors[name] = np.frombuffer(data[base + begin:base + end], dtype="<f4").reshape(info["shape"]).copy()
    return tensors, metadata


def write_safetensors(path, tensors, metadata):
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


def config_of(meta):
    c = {k: meta[k] for k in meta}
    for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_mlp", "d_vocab", "n_ctx"):
        c[key] = int(meta[key])
    c["rope_theta"], c["norm_eps"] = float(meta["rope_theta"]), float(meta["norm_eps"])
    c["d_vocab_out"] = int(meta.get("d_vocab_out", c["d_vocab"]))
    c["parallel"] = meta.get("parallel_attn_mlp") == "true"
    c["rotary_dim"] = int(meta.get("rotary_dim_size", "0"))
    for key in ("tied_unembed", "linear_biases"):
        c[key] = meta.get(key) == "true"
    return c


def forward(c, W, tokens, patch=None, sites=None):
    """Logits (pos, vocab) of one sequence. `sites` (a dict) receives every GRAD_SITES activation, each a tensor
    that the rest of the pass computes from (so its .grad is the site's gradient). `patch` (site name, function)
    replaces the named activation with function(activation) before the rest of the pass uses it."""
    pos, n_heads, n_kv = len(tokens), c["n_heads"], c["n_kv_heads"]
    d_head = c["d_model"] // n_heads
    group = n_heads // n_kv
    eps = c["norm_eps"]

    def site(name, value):
        if patch is not None and patch[0] == name:
            value = patch[1](value)
        if sites is not None:
            value = value.clone()
            if value.requires_grad:
                value.retain_grad()
            sites[name] = value
        return value

    def linear(x, weight, bias):
        out = x @ W[weight].T
        return out + W[bias] if c["linear_biases"] else out

    def layer_norm(x, gain, hook):
        centred = x - x.mean(dim=-1, keepdim=True)
        scale = site(hook + ".hook_scale", torch.sqrt((centred * centred).mean(dim=-1, keepdim=True) + eps))
        normalized = site(hook + ".hook_normalized", centred / scale)
        return normalized * W[gain] + W[gain + "_bias"]

    def rotate(x):  # (pos, heads, d_head), split halves within the first rotary_dim dims
        rotary = c["rotary_dim"] or d_head
        half = rotary // 2
        i = torch.arange(half, dtype=torch.float64)
        angle = torch.arange(pos, dtype=torch.float64)[:, None] * c["rope_theta"] ** (-2.0 * i / rotary)[None, :]
        cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]
        a, b = x[..., :half], x[..., half:rotary]
        return torch.cat([a * cos - b * sin, a * sin + b * cos, x[..., rotary:]], dim=-1)

    def activation(x):
        if c["mlp"] == "plain_gelu":
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
        assert c["mlp"] == "plain_gelu_erf"
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    assert c["norm"] == "layer"
    x = site("hook_embed", W["token_embedding"][tokens])
    if c["positions"] == "learned":
        x = x + site("hook_pos_embed", W["pos_embedding"][:pos])
    future = torch.triu(torch.ones(pos, pos, dtype=torch.bool), 1)
    for layer in range(c["n_layers"]):
        p = f"blocks.{layer}."
        x = site(p + "hook_resid_pre", x)
        xn = layer_norm(x, p + "attn_norm", p + "ln1")
        q = site(p + "attn.hook_q", linear(xn, p + "w_q", p + "b_q").reshape(pos, n_heads, d_head))
        k = site(p + "attn.hook_k", linear(xn, p + "w_k", p + "b_k").reshape(pos, n_kv, d_head))
        v = site(p + "attn.hook_v", linear(xn, p + "w_v", p + "b_v").reshape(pos, n_kv, d_head))
        if c["positions"] == "rotary":
            q, k = site(p + "attn.hook_rot_q", rotate(q)), site(p + "attn.hook_rot_k", rotate(k))
        heads = []
        for h in range(n_heads):
            scores = q[:, h, :] @ k[:, h // group, :].T / math.sqrt(d_head)
            heads.append(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1))
        pattern = site(p + "attn.hook_pattern", torch.stack(heads))  # (head, query, key)
        z = site(p + "attn.hook_z", torch.stack([pattern[h] @ v[:, h // group, :] for h in range(n_heads)], dim=1))
        attn_out = site(p + "hook_attn_out", linear(z.reshape(pos, n_heads * d_head), p + "w_o", p + "b_o"))
        resid_pre = x
        x = x + attn_out
        if not c["parallel"]:
            x = site(p + "hook_resid_mid", x)
        xn = layer_norm(resid_pre if c["parallel"] else x, p + "mlp_norm", p + "ln2")
        pre = site(p + "mlp.hook_pre", linear(xn, p + "w_up", p + "b_up"))
        post = site(p + "mlp.hook_post", activation(pre))
        mlp_out = site(p + "hook_mlp_out", linear(post, p + "w_down", p + "b_down"))
        x = site(p + "hook_resid_post", x + mlp_out)
    xn = layer_norm(x, "final_norm", "ln_final")
    unembed = W["token_embedding"] if c["tied_unembed"] else W["unembed"]
    logits = xn @ unembed.T
    return logits + W["unembed_bias"] if c["linear_biases"] else logits


def metrics(logits, tokens):
    ce = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(tokens[1:]))
    return {"ce": ce, "diff": logits[-1, DIFF_TOKENS[0]] - logits[-1, DIFF_TOKENS[1]]}


def patch_function(clean_value_of, head, positions):
    """Replaces the selected head/positions of an activation with the corrupt run's value there."""
    def replace(value):
        out = value.clone()
        corrupt = clean_value_of
        rows = list(range(value.shape[0])) if positions is None else positions
        for r in rows:
            if head is None:
                out[r] = corrupt[r]
            else:
                out[r, head] = corrupt[r, head]
        return out
    return replace


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixtures", default=os.path.join(here, "fixtures"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = os.path.join(args.fixtures, "family_grad")
    os.makedirs(out_dir, exist_ok=True)
    for name in NAMES:
        tensors, meta = read_safetensors(os.path.join(args.fixtures, "variants", name + ".safetensors"))
        c = config_of(meta)
        tokens = [int(t) for t in meta["tokens"].split(",")]
        weight_names = [n for n in tensors if n not in ("tokens", "logits") and not n.startswith("hook_")
                        and ".hook_" not in n and not n.startswith("ln_final.")]
        W = {n: torch.tensor(tensors[n], dtype=torch.float64, requires_grad=True) for n in weight_names}

        stored, values = [], {}
        for metric in ("ce", "diff"):
            for w in W.values():
                w.grad = None
            sites = {}
            logits = forward(c, W, tokens, sites=sites)
            reference = torch.tensor(tensors["logits"][0], dtype=torch.float64)
            assert float((logits - reference).abs().max()) < 2e-5, "the PyTorch forward disagrees with variants_reference.py"
            value = metrics(logits, tokens)[metric]
            value.backward()
            values[metric] = float(value)
            for n in weight_names:
                stored.append((f"{metric}.grad.{n}", W[n].grad.numpy()))
            for layer_name, act in sites.items():
                suffix = layer_name.split(".", 2)[-1] if layer_name.startswith("blocks.") else layer_name
                if suffix in GRAD_SITES and act.grad is not None:
                    stored.append((f"{metric}.grad.{layer_name}", act.grad.numpy()[None]))

            # Self-check: central finite differences of sampled weight entries.
            rng = np.random.RandomState(7)
            with torch.no_grad():
                for n in sorted(weight_names)[:: max(1, len(weight_names) // FD_SAMPLES)]:
                    flat = W[n].view(-1)
                    i = int(rng.randint(flat.numel()))
                    keep = float(flat[i])
                    flat[i] = keep + FD_EPS
                    up = float(metrics(forward(c, W, tokens), tokens)[metric])
                    flat[i] = keep - FD_EPS
                    down = float(metrics(forward(c, W, tokens), tokens)[metric])
                    flat[i] = keep
                    fd = (up - down) / (2 * FD_EPS)
                    analytic = float(W[n].grad.view(-1)[i])
                    assert abs(fd - analytic) <= FD_TOLERANCE * max(1.0, abs(analytic)), (name, n, fd, analytic)

        corrupt = list(tokens)
        for position, token in CORRUPT_POSITIONS.items():
            corrupt[position] = token
        with torch.no_grad():
            corrupt_sites = {}
            forward(c, W, corrupt, sites=corrupt_sites)
            clean_logits = forward(c, W, tokens)
            for case, hook, layer, head, positions in PATCHES:
                site_name = f"blocks.{layer}.{hook}"
                patched = forward(c, W, tokens, patch=(site_name, patch_function(corrupt_sites[site_name], head,
                                                                                  positions)))
                assert float((patched - clean_logits).abs().max()) > 1e-3, f"{name}: patch {case} changes nothing"
                stored.append((f"patched.{case}", patched.numpy()[None]))
        stored.append(("corrupt_tokens", np.array(corrupt, dtype=np.float32)[None]))
        metadata = {"tokens": meta["tokens"], "ce": repr(values["ce"]), "diff": repr(values["diff"]),
                    "diff_tokens": f"{DIFF_TOKENS[0]},{DIFF_TOKENS[1]}",
                    "generator": "tests/reference/family_grad_reference.py (PyTorch autograd, float64)"}
        path = os.path.join(out_dir, name + ".safetensors")
        write_safetensors(path, stored, metadata)
        print(f"{name}: {len(stored)} tensors, {os.path.getsize(path)} bytes, ce {values['ce']:.6f}, "
              f"diff {values['diff']:.6f}")


if __name__ == "__main__":
    sys.exit(main())
