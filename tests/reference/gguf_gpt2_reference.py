#!/usr/bin/python3
"""A small GGUF file of architecture `gpt2` (llama.cpp's tensor names and keys) and its reference logits.

Reads ../shared/models/hf/tiny-random-gpt2/model.safetensors (Hugging Face GPT2LMHeadModel layout: Conv1D weights
stored (in, out), fused c_attn) with numpy, keeps a reduced model so the committed fixture stays small (the first
2 of 5 blocks, the first 64 of 512 positions, all 1000 tokens, d_model 32), and writes

  fixtures/gguf_gpt2/tiny-gpt2.gguf   GGUF v3, all F32, output.weight absent (tied to token_embd.weight)
  fixtures/gguf_gpt2/logits.npy       (pos, d_vocab) float32 logits of TOKENS, computed in float64
  fixtures/gguf_gpt2/tokens.npy       (pos,) int32 TOKENS

The GGUF bytes are written here from the format's specification (no gguf package): magic, version 3, counts,
key/value pairs, tensor infos (ggml dims are the row-major shape reversed: a (rows, cols) matrix is [cols, rows]),
padding to general.alignment (32), then the tensor data, each tensor at a multiple of 32.
llama.cpp's gpt2 layout: blk.L.attn_qkv.weight is the (3 d_model, d_model) matrix whose rows are Q, then K, then V
(Hugging Face's c_attn.weight transposed), blk.L.attn_output / ffn_up / ffn_down are the transposed Conv1D weights,
every linear layer and LayerNorm has a bias, feed_forward_length is 4 d_model.

The forward pass (float64, written from GPT-2's equations): x = wte[t] + wpe[p]; per block
x += c_proj(attn(ln_1(x))), x += mlp(ln_2(x)) with LayerNorm eps 1e-5, causal softmax(q k^T / sqrt(d_head)),
gelu_new (tanh form); logits = ln_f(x) wte^T (no unembedding bias). Run with Debian's python:

    /usr/bin/python3 tests/reference/gguf_gpt2_reference.py [--models ../shared/models]

Re-running writes byte-identical files.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

LAYERS = 2
N_CTX = 64
TOKENS = [98, 5, 17, 400, 999, 0, 123, 42, 7, 511]
ALIGN = 32


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + begin:8 + n + end], dtype="<f4").reshape(info["shape"]).copy()
    return out


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, kind, value):
    # Value types of the specification: 4 uint32, 6 float32, 8 string.
    out = gguf_string(key) + struct.pack("<I", kind)
    if kind == 4:
        return out + struct.pack("<I", value)
    if kind == 6:
        return out + struct.pack("<f", value)
    if kind == 8:
        return out + gguf_string(value)
    raise ValueError(kind)


def write_gguf(path, metadata, tensors):
    """metadata: [(key, type, value)]; tensors: [(name, float32 array in row-major shape)]."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(gguf_kv(*kv) for kv in metadata)
    infos, blobs, offset = b"", b"", 0
    for name, array in tensors:
        array = np.ascontiguousarray(array, dtype="<f4")
        dims = list(reversed(array.shape))
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", 0, offset)  # type F32, offset inside the data section
        blob = array.tobytes()
        pad = (-len(blob)) % ALIGN
        blobs += blob + b"\0" * pad
        offset += len(blob) + pad
    body = head + infos
    body += b"\0" * ((-len(body)) % ALIGN)
    with open(path, "wb") as f:
        f.write(body + blobs)


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    scale = torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps)
    return centred / scale * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(sd, config, tokens):
    t = lambda name: torch.from_numpy(sd[name]).double()
    d, heads = config["n_embd"], config["n_head"]
    dh = d // heads
    pos = len(tokens)
    x = t("wte.weight")[tokens] + t("wpe.weight")[:pos]
    mask = torch.triu(torch.ones(pos, pos, dtype=torch.bool), 1)
    for layer in range(LAYERS):
        p = f"h.{layer}."
        h = layer_norm(x, t(p + "ln_1.weight"), t(p + "ln_1.bias"))
        qkv = h @ t(p + "attn.c_attn.weight") + t(p + "attn.c_attn.bias")  # (pos, 3d)
        q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(pos, heads, dh).transpose(0, 1) for i in range(3))
        scores = q @ k.transpose(1, 2) / math.sqrt(dh)  # (heads, pos, pos)
        pattern = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        z = (pattern @ v).transpose(0, 1).reshape(pos, d)
        x = x + z @ t(p + "attn.c_proj.weight") + t(p + "attn.c_proj.bias")
        h = layer_norm(x, t(p + "ln_2.weight"), t(p + "ln_2.bias"))
        post = gelu_new(h @ t(p + "mlp.c_fc.weight") + t(p + "mlp.c_fc.bias"))
        x = x + post @ t(p + "mlp.c_proj.weight") + t(p + "mlp.c_proj.bias")
    x = layer_norm(x, t("ln_f.weight"), t("ln_f.bias"))
    return x @ t("wte.weight").T


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_models = os.environ.get("MECHLENS_MODELS", os.path.join(here, "..", "..", "..", "shared", "models"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=default_models)
    parser.add_argument("--out", default=os.path.join(here, "fixtures", "gguf_gpt2"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    folder = os.path.join(args.models, "hf", "tiny-random-gpt2")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    raw = read_safetensors(os.path.join(folder, "model.safetensors"))
    sd = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in raw.items()}
    d = config["n_embd"]
    d_mlp = config["n_inner"] or 4 * d

    metadata = [
        ("general.architecture", 8, "gpt2"),
        ("general.name", 8, "tiny-random-gpt2, first 2 blocks"),
        ("gpt2.context_length", 4, N_CTX),
        ("gpt2.embedding_length", 4, d),
        ("gpt2.feed_forward_length", 4, d_mlp),
        ("gpt2.block_count", 4, LAYERS),
        ("gpt2.attention.head_count", 4, config["n_head"]),
        ("gpt2.attention.layer_norm_epsilon", 6, config["layer_norm_epsilon"]),
    ]
    tensors = [("token_embd.weight", sd["wte.weight"]), ("position_embd.weight", sd["wpe.weight"][:N_CTX])]
    for layer in range(LAYERS):
        p, b = f"h.{layer}.", f"blk.{layer}."
        tensors += [
            (b + "attn_norm.weight", sd[p + "ln_1.weight"]),
            (b + "attn_norm.bias", sd[p + "ln_1.bias"]),
            (b + "attn_qkv.weight", sd[p + "attn.c_attn.weight"].T),  # (in, out) -> (out = q|k|v, in)
            (b + "attn_qkv.bias", sd[p + "attn.c_attn.bias"]),
            (b + "attn_output.weight", sd[p + "attn.c_proj.weight"].T),
            (b + "attn_output.bias", sd[p + "attn.c_proj.bias"]),
            (b + "ffn_norm.weight", sd[p + "ln_2.weight"]),
            (b + "ffn_norm.bias", sd[p + "ln_2.bias"]),
            (b + "ffn_up.weight", sd[p + "mlp.c_fc.weight"].T),
            (b + "ffn_up.bias", sd[p + "mlp.c_fc.bias"]),
            (b + "ffn_down.weight", sd[p + "mlp.c_proj.weight"].T),
            (b + "ffn_down.bias", sd[p + "mlp.c_proj.bias"]),
        ]
    tensors += [("output_norm.weight", sd["ln_f.weight"]), ("output_norm.bias", sd["ln_f.bias"])]

    os.makedirs(args.out, exist_ok=True)
    write_gguf(os.path.join(args.out, "tiny-gpt2.gguf"), metadata, tensors)
    logits = forward(sd, config, TOKENS)
    np.save(os.path.join(args.out, "logits.npy"), logits.numpy().astype("<f4"))
    np.save(os.path.join(args.out, "tokens.npy"), np.array(TOKENS, dtype="<i4"))
    print(f"wrote {args.out}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max().item():.4f}")


if __name__ == "__main__":
    sys.exit(main())
