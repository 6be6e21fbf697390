#!/usr/bin/python3
"""Independent float64 reference of the model variants mechlens's forward pass supports.

For a handful of tiny configs covering {RMSNorm, no norm} x {rotary, learned positions} x {gated SiLU MLP,
plain GELU MLP, attention-only}, this script draws weights with numpy (fixed seeds), runs a forward pass written
directly from the equations in float64 (from the float32-rounded weights), and writes one
`fixtures/variants/<name>.safetensors` per config holding the weights under mechlens's `parameter_layout` names,
the tokens, the logits and TransformerLens-named activations, with the config in `__metadata__`. The C++ test
`[variants]` in tests/unit/test_model.cpp loads each file and compares. Run with Debian's python:

    /usr/bin/python3 tests/reference/variants_reference.py [--out tests/reference/fixtures/variants]

Only numpy and the standard library are used; re-running writes byte-identical files.

Conventions (the same as llama_reference.py where they overlap):
- RMSNorm: scale = sqrt(mean(x^2) + 1e-5), normalized = x / scale, output = normalized * gain.
  Without norms (TransformerLens normalization_type None) the sublayers read the residual stream itself.
- Rotary: llama2.c adjacent pairs (2i, 2i+1) per head, angle = pos * 10000^(-2i/d_head), pos from 0.
- Learned positions: resid_pre of block 0 = W_E[token] + W_pos[pos] (hook_embed, hook_pos_embed); no rotary.
- Attention: q.k / sqrt(d_head), causal mask, softmax, grouped-query (query head h reads kv head
  h // (n_heads / n_kv_heads)), z @ W_O^T.
- Gated MLP: hook_pre = x W_gate^T, hook_pre_linear = x W_up^T, hook_post = silu(pre) * pre_linear, then W_down.
  Plain MLP: hook_pre = x W_up^T, hook_post = gelu_tanh(pre) (GPT-2's gelu_new), then W_down. No biases.
- Attention-only blocks (TransformerLens attn_only): resid_post = resid_pre + attn_out; no hook_resid_mid.
- Logits = final_input @ W_U^T, W_U = the token embedding when tied, else the `unembed` tensor.
- The GPT-2 family (configs that set them): LayerNorm "layer" (centred = x - mean, scale = sqrt(mean(centred^2) +
  1e-5), normalized = centred / scale before the gain, output = normalized * gain + bias); linear biases on Q, K, V,
  O, the MLP's in and out and the unembedding; MLP activations relu and exact (erf) GELU; bidirectional attention
  (no mask); d_vocab_out logits from an untied (d_vocab_out, d_model) unembedding.
- GPT-NeoX (configs that set them): parallel attention and MLP (both read hook_resid_pre through their own norms;
  resid_post = (resid_pre + attn_out) + mlp_out; no hook_resid_mid) and partial rotary: only the first rotary_dim
  dims of each head rotate, pairing (i, i + rotary_dim/2), angle = pos * theta^(-2i/rotary_dim).
- Every tensor is float32 (mechlens's safetensors reader takes F32 only), so `tokens` (1, 10) holds small integers
  as floats; the ids are also listed in the metadata under "tokens".
"""

import argparse
import math
import json
import os
import struct
import sys

import numpy as np

D_MODEL, N_LAYERS, N_HEADS, N_KV_HEADS, D_MLP, D_VOCAB, N_CTX = 16, 2, 4, 2, 32, 37, 12
N_TOKENS = 10
NORM_EPS = 1e-5
ROPE_THETA = 10000.0

# name, norm, positions, mlp, tied unembedding, then the GPT-2 family's options (only written when set):
# linear biases, attention direction, d_vocab_out, then GPT-NeoX's: parallel attention + MLP, rotary width (0: all
# of d_head) with split-halves pairing
CONFIGS = [
    ("attn_only_none_learned", "none", "learned", "none", False),
    ("attn_only_rms_rotary", "rms", "rotary", "none", True),
    ("gelu_rms_learned", "rms", "learned", "plain_gelu", False),
    ("gated_none_rotary", "none", "rotary", "gated_silu", True),
    ("gated_rms_rotary", "rms", "rotary", "gated_silu", True),
    ("gpt2_layer_learned", "layer", "learned", "plain_gelu", False, True, "causal", 0),
    ("relu_layer_bidirectional_classifier", "layer", "learned", "plain_relu", False, True, "bidirectional", 5),
    ("gelu_erf_none_biases", "none", "learned", "plain_gelu_erf", False, True, "causal", 0),
    ("attn_only_layer_biases_classifier", "layer", "learned", "none", False, True, "causal", 2),
    ("neox_parallel_partial_rotary", "layer", "rotary", "plain_gelu_erf", False, True, "causal", 0, True, 2),
]


def make_config(name, norm, positions, mlp, tied, biases=False, attention="causal", d_vocab_out=0, parallel=False,
                rotary_dim=0):
    c = dict(name=name, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, d_mlp=D_MLP,
             d_vocab=D_VOCAB, n_ctx=N_CTX, rope_theta=ROPE_THETA, norm_eps=NORM_EPS, tied_unembed=tied,
             rope="adjacent_pairs", norm=norm, positions=positions, mlp=mlp)
    if biases:
        c["linear_biases"] = True
    if attention != "causal":
        c["attention"] = attention
    if d_vocab_out:
        c["d_vocab_out"] = d_vocab_out
    if parallel:
        c["parallel_attn_mlp"] = True
    if rotary_dim:
        c["rotary_dim_size"] = rotary_dim
        c["rope"] = "split_halves"
    return c


def vocab_out(c):
    return c.get("d_vocab_out", c["d_vocab"])


def parameter_layout(c):
    """(name, shape) in the order of mechlens::parameter_layout: only the tensors the config uses."""
    d, d_head = c["d_model"], c["d_model"] // c["n_heads"]
    q, kv = c["n_heads"] * d_head, c["n_kv_heads"] * d_head
    norms, layer_norm, biases = c["norm"] != "none", c["norm"] == "layer", c.get("linear_biases", False)
    out = [("token_embedding", (c["d_vocab"], d))]
    if c["positions"] == "learned":
        out.append(("pos_embedding", (c["n_ctx"], d)))
    for layer in range(c["n_layers"]):
        p = f"blocks.{layer}."
        if norms:
            out.append((p + "attn_norm", (d,)))
        if layer_norm:
            out.append((p + "attn_norm_bias", (d,)))
        for name, shape in (("q", (q, d)), ("k", (kv, d)), ("v", (kv, d)), ("o", (d, q))):
            out.append((p + "w_" + name, shape))
            if biases:
                out.append((p + "b_" + name, (shape[0],)))
        if c["mlp"] != "none":
            if norms:
                out.append((p + "mlp_norm", (d,)))
            if layer_norm:
                out.append((p + "mlp_norm_bias", (d,)))
            if c["mlp"] == "gated_silu":
                out.append((p + "w_gate", (c["d_mlp"], d)))
            out.append((p + "w_up", (c["d_mlp"], d)))
            if biases:
                out.append((p + "b_up", (c["d_mlp"],)))
            out.append((p + "w_down", (d, c["d_mlp"])))
            if biases:
                out.append((p + "b_down", (d,)))
    if norms:
        out.append(("final_norm", (d,)))
    if layer_norm:
        out.append(("final_norm_bias", (d,)))
    if not c["tied_unembed"]:
        out.append(("unembed", (vocab_out(c), d)))
    if biases:
        out.append(("unembed_bias", (vocab_out(c),)))
    return out


def draw_weights(c, rng):
    """Float32 weights of roughly unit-scale activations: N(0, 1/fan_in) matrices, gains near 1."""
    weights = {}
    for name, shape in parameter_layout(c):
        field = name.rsplit(".", 1)[-1]
        if field in ("attn_norm", "mlp_norm", "final_norm"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 1:  # a norm's or a linear layer's bias
            value = 0.2 * rng.standard_normal(shape)
        elif field in ("token_embedding", "unembed"):
            value = rng.standard_normal(shape)
        elif field == "pos_embedding":
            value = 0.5 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = value.astype(np.float32)
    return weights


# --------------------------------------------------------------------------------------------------
# The forward pass, from the equations


def rms_norm(x, gain, eps):
    scale = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    normalized = x / scale
    return normalized * gain, scale, normalized


def layer_norm(x, gain, bias, eps):
    """TransformerLens's LN: centre, divide by sqrt(mean(centred^2) + eps), then gain and bias."""
    centred = x - np.mean(x, axis=-1, keepdims=True)
    scale = np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)
    normalized = centred / scale
    return normalized * gain + bias, scale, normalized


def rotary_adjacent(x, theta):
    """x: (pos, heads, d_head); rotates pairs (2i, 2i+1) of every head by pos * theta^(-2i/d_head)."""
    pos, _, d_head = x.shape
    half = np.arange(d_head // 2, dtype=np.float64)
    angle = np.arange(pos, dtype=np.float64)[:, None] * theta ** (-2.0 * half / d_head)[None, :]  # (pos, d_head/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def rotary_split_halves(x, theta, rotary_dim):
    """x: (pos, heads, d_head); rotates pairs (i, i + rotary_dim/2) of the first rotary_dim dims of every head by
    pos * theta^(-2i/rotary_dim) (GPT-NeoX); the other dims pass through."""
    pos = x.shape[0]
    half = rotary_dim // 2
    i = np.arange(half, dtype=np.float64)
    angle = np.arange(pos, dtype=np.float64)[:, None] * theta ** (-2.0 * i / rotary_dim)[None, :]  # (pos, half)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    a, b = x[..., :half], x[..., half:rotary_dim]
    out = x.copy()
    out[..., :half] = a * cos - b * sin
    out[..., half:rotary_dim] = a * sin + b * cos
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    erf = np.vectorize(math.erf)
    return (0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))).astype(x.dtype)


def relu(x):
    return np.maximum(x, 0.0)


def forward(c, w, tokens, dtype=np.float64):
    """Runs one sequence of token ids; returns (logits (pos, vocab), {hook name: activation without batch axis})."""
    W = {k: v.astype(dtype) for k, v in w.items()}
    eps = dtype(c["norm_eps"])
    n_heads, n_kv = c["n_heads"], c["n_kv_heads"]
    d_head = c["d_model"] // n_heads
    group = n_heads // n_kv
    pos = len(tokens)
    acts = {}

    def linear(x, weight_name, bias_name, weight=None):
        """x W^T, plus the bias when the config has linear biases."""
        out = x @ (W[weight_name] if weight is None else weight).T
        return out + W[bias_name] if c.get("linear_biases", False) else out

    def norm(x, gain_name, hook):
        if c["norm"] == "none":
            return x
        if c["norm"] == "layer":
            out, scale, normalized = layer_norm(x, W[gain_name], W[gain_name + "_bias"], eps)
        else:
            out, scale, normalized = rms_norm(x, W[gain_name], eps)
        acts[hook + ".hook_scale"] = scale
        acts[hook + ".hook_normalized"] = normalized
        return out

    x = W["token_embedding"][tokens]
    acts["hook_embed"] = x
    if c["positions"] == "learned":
        acts["hook_pos_embed"] = W["pos_embedding"][:pos]
        x = x + acts["hook_pos_embed"]
    for layer in range(c["n_layers"]):
        p = f"blocks.{layer}."
        acts[p + "hook_resid_pre"] = x
        xn = norm(x, p + "attn_norm", p + "ln1")
        q = (linear(xn, p + "w_q", p + "b_q")).reshape(pos, n_heads, d_head)
        k = (linear(xn, p + "w_k", p + "b_k")).reshape(pos, n_kv, d_head)
        v = (linear(xn, p + "w_v", p + "b_v")).reshape(pos, n_kv, d_head)
        if c["positions"] == "rotary" and c["rope"] == "split_halves":
            rotary_dim = c.get("rotary_dim_size", d_head)
            q = rotary_split_halves(q, c["rope_theta"], rotary_dim)
            k = rotary_split_halves(k, c["rope_theta"], rotary_dim)
            acts[p + "attn.hook_rot_q"] = q
        elif c["positions"] == "rotary":
            q, k = rotary_adjacent(q, c["rope_theta"]), rotary_adjacent(k, c["rope_theta"])
            acts[p + "attn.hook_rot_q"] = q
        pattern = np.empty((n_heads, pos, pos), dtype=dtype)
        z = np.empty((pos, n_heads, d_head), dtype=dtype)
        future = np.triu(np.ones((pos, pos), dtype=bool), 1)
        if c.get("attention", "causal") == "bidirectional":
            future[:] = False
        for h in range(n_heads):
            scores = q[:, h, :] @ k[:, h // group, :].T / np.sqrt(dtype(d_head))
            scores = np.where(future, -np.inf, scores)
            e = np.exp(scores - scores.max(axis=-1, keepdims=True))
            pattern[h] = e / e.sum(axis=-1, keepdims=True)
            z[:, h, :] = pattern[h] @ v[:, h // group, :]
        acts[p + "attn.hook_pattern"] = pattern
        acts[p + "attn.hook_z"] = z
        attn_out = linear(z.reshape(pos, n_heads * d_head), p + "w_o", p + "b_o")
        acts[p + "hook_attn_out"] = attn_out
        parallel = c.get("parallel_attn_mlp", False)
        resid_pre = x
        x = x + attn_out
        if c["mlp"] != "none":
            if not parallel:
                acts[p + "hook_resid_mid"] = x
            xn = norm(resid_pre if parallel else x, p + "mlp_norm", p + "ln2")
            if c["mlp"] == "gated_silu":
                pre, pre_linear = xn @ W[p + "w_gate"].T, xn @ W[p + "w_up"].T
                acts[p + "mlp.hook_pre_linear"] = pre_linear
                post = silu(pre) * pre_linear
            else:
                pre = linear(xn, p + "w_up", p + "b_up")
                post = {"plain_gelu": gelu_tanh, "plain_gelu_erf": gelu_erf, "plain_relu": relu}[c["mlp"]](pre)
            acts[p + "mlp.hook_pre"] = pre
            acts[p + "mlp.hook_post"] = post
            mlp_out = linear(post, p + "w_down", p + "b_down")
            acts[p + "hook_mlp_out"] = mlp_out
            x = x + mlp_out
        acts[p + "hook_resid_post"] = x
    xn = norm(x, "final_norm", "ln_final")
    unembed = W["token_embedding"] if c["tied_unembed"] else W["unembed"]
    return linear(xn, None, "unembed_bias", unembed), acts


# Stored activations: enough to locate a mismatch, small enough to keep the files small. "L" is every block.
STORED = ["hook_embed", "hook_pos_embed", "L.hook_resid_pre", "L.ln1.hook_scale", "L.attn.hook_rot_q",
          "L.attn.hook_pattern", "L.attn.hook_z", "L.hook_attn_out", "L.hook_resid_mid", "L.mlp.hook_pre",
          "L.mlp.hook_pre_linear", "L.mlp.hook_post", "L.hook_mlp_out", "L.hook_resid_post",
          "ln_final.hook_normalized"]


def stored_names(c, acts):
    names = []
    for pattern in STORED:
        layers = range(c["n_layers"]) if pattern.startswith("L.") else [None]
        for layer in layers:
            name = pattern if layer is None else f"blocks.{layer}." + pattern[2:]
            if name in acts:
                names.append(name)
    return names


# --------------------------------------------------------------------------------------------------
# safetensors, written with the standard library


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, float32 array); an 8-byte little-endian header length, the JSON header padded with
    spaces to a multiple of 8, then the raw little-endian data in list order."""
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


def check(condition, message):
    if not condition:
        sys.exit("variants_reference.py: check failed: " + message)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "fixtures", "variants"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    for index, entry in enumerate(CONFIGS):
        name = entry[0]
        c = make_config(*entry)
        rng = np.random.RandomState(1000 + index)  # the legacy generator: its streams never change across numpy
        weights = draw_weights(c, rng)
        tokens = rng.randint(0, c["d_vocab"], size=N_TOKENS)
        logits, acts = forward(c, weights, tokens)

        # Self-checks: causality (a prefix gives the prefix's logits, only for causal attention) and float32
        # agreement with float64.
        prefix_logits, _ = forward(c, weights, tokens[:4])
        prefix_gap = np.max(np.abs(prefix_logits - logits[:4]))
        if c.get("attention", "causal") == "causal":
            check(prefix_gap < 1e-12, f"{name}: a prefix changes earlier logits")
        else:
            check(prefix_gap > 1e-3, f"{name}: bidirectional attention ignores later tokens")
        logits32, _ = forward(c, weights, tokens, np.float32)
        drift = float(np.max(np.abs(logits32 - logits)))
        check(drift < 1e-4, f"{name}: float32 and float64 logits differ by {drift}")
        check(np.all(np.isfinite(logits)), f"{name}: non-finite logits")

        tensors = [(n, weights[n]) for n, _ in parameter_layout(c)]
        tensors.append(("tokens", tokens.astype(np.float32)[None, :]))
        tensors.append(("logits", logits.astype(np.float32)[None]))
        for hook in stored_names(c, acts):
            tensors.append((hook, acts[hook].astype(np.float32)[None]))
        metadata = {k: (("true" if v else "false") if isinstance(v, bool) else str(v)) for k, v in c.items()}
        metadata["tokens"] = ",".join(str(int(t)) for t in tokens)
        metadata["generator"] = "tests/reference/variants_reference.py (numpy float64 from float32 weights)"
        path = os.path.join(args.out, name + ".safetensors")
        write_safetensors(path, tensors, metadata)
        print(f"{name}: {len(tensors)} tensors, {os.path.getsize(path)} bytes, |logits| max "
              f"{np.max(np.abs(logits)):.3g}, float32 drift {drift:.2g}")


if __name__ == "__main__":
    main()
