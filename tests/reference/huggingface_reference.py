#!/usr/bin/python3
"""Independent PyTorch reference of three Hugging Face architectures, and the small models the C++ test loads.

Hugging Face `transformers` is not used (nor installed): each forward pass is written here from the architecture's
maths, in float64 from the stored weights (after any rounding to BF16/F16), and the model folders are written in
the exact layout Hugging Face saves (config.json + model.safetensors, or shards + model.safetensors.index.json).

1. GPT-2 (`GPT2LMHeadModel`): the shared random-weight model ../shared/models/hf/tiny-random-gpt2 (its real
   layout: Conv1D weights stored (in, out), c_attn fused q|k|v along the out axis, lm_head tied to wte).
2. LLaMA (`LlamaForCausalLM`): written here with seeded random weights, stored in BF16, grouped-query attention
   (4 query heads, 2 key/value heads), an untied lm_head, rotary in Hugging Face's split-halves order.
3. GPT-NeoX (`GPTNeoXForCausalLM`): written here with seeded random weights in F32, rotary_pct 0.25 (rotary on
   the first quarter of each head, split halves inside it), use_parallel_residual true, query_key_value
   interleaved per head, saved as two shards with an index.

`neox_sequential_reference.safetensors` runs the same NeoX weights as a sequential block with full rotary (the
config the test sets after loading), which checks the NeoX tensor layout independently of the forward pass's
parallel-residual and partial-rotary support.

Each `<name>_reference.safetensors` holds `tokens`, `logits` (1, pos, vocab) and blocks.L.hook_resid_post
(1, pos, d_model), blocks.L.attn.hook_pattern (1, head, q, k) and blocks.L.ln1.hook_normalized (1, pos, d_model)
under TransformerLens's names with mechlens's conventions (hook_normalized is before the gain and bias). Run with
Debian's python (torch 1.13, numpy):

    /usr/bin/python3 tests/reference/huggingface_reference.py [--models ../shared/models]

Re-running writes byte-identical files (seeded numpy generators, one torch thread, no timestamps).
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch

TOKENS = {
    "gpt2": [98, 12, 517, 3, 999, 250, 42, 42, 7, 640, 81, 0, 333],
    "llama": [1, 17, 93, 4, 4, 60, 2, 88, 31, 5, 77],
    "neox": [0, 9, 120, 45, 45, 3, 101, 64, 12, 7, 99, 127],
}


# ---- safetensors ------------------------------------------------------------------------------------------------

def read_safetensors(path):
    """{name: float64 torch tensor} of an F32/F16/BF16 safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = data[begin:end]
        if entry["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif entry["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif entry["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            raise ValueError(entry["dtype"])
        out[name] = torch.from_numpy(a.reshape(entry["shape"]).copy())
    return out


def bf16_bits(a):
    """float32 array -> uint16 BF16 bits, rounded to nearest even (no NaN in these weights)."""
    u = np.ascontiguousarray(a, dtype="<f4").view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def write_safetensors(path, tensors, metadata, dtype="F32"):
    """Tensors [(name, float array)] in `dtype` (F32, F16 or BF16), header padded with spaces to 8 bytes."""
    header = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, array in tensors:
        if dtype == "F32":
            blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        elif dtype == "F16":
            blob = np.ascontiguousarray(array, dtype="<f2").tobytes()
        else:
            blob = bf16_bits(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


# ---- shared maths -----------------------------------------------------------------------------------------------

def layer_norm(x, w, b, eps, acts, hook):
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    normalized = centred / scale
    if hook:
        acts[hook + ".hook_normalized"] = normalized
    return normalized * w + b


def rms_norm(x, w, eps, acts, hook):
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    normalized = x / scale
    if hook:
        acts[hook + ".hook_normalized"] = normalized
    return normalized * w


def rotary(x, theta, rotary_dim):
    """Hugging Face's rotate_half rotary on the first rotary_dim dims of x (pos, head, d_head)."""
    pos = x.shape[0]
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    angles = torch.arange(pos, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (pos, rotary_dim / 2)
    emb = torch.cat([angles, angles], -1)[:, None, :].to(x.dtype)                   # (pos, 1, rotary_dim)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    return torch.cat([rot * emb.cos() + rotated_half * emb.sin(), rest], -1)


def attention(q, k, v, acts, prefix):
    """q (pos, heads, dh), k/v (pos, kv_heads, dh) -> z (pos, heads * dh); records attn.hook_pattern."""
    pos, heads, dh = q.shape
    group = heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhe,khe->hqk", q, k) / math.sqrt(dh)
    future = torch.triu(torch.ones(pos, pos, dtype=torch.bool), 1)
    pattern = scores.masked_fill(future, float("-inf")).softmax(-1)
    acts[prefix + "attn.hook_pattern"] = pattern
    return torch.einsum("hqk,khe->qhe", pattern, v).reshape(pos, heads * dh)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


# ---- GPT-2 -----------------------------------------------------------------------------------------------------

def gpt2_forward(cfg, W, tokens):
    W = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in W.items()}
    d, heads = cfg["n_embd"], cfg["n_head"]
    dh, eps = d // heads, cfg["layer_norm_epsilon"]
    act = {"gelu_new": gelu_tanh, "gelu": gelu_erf, "relu": torch.relu}[cfg["activation_function"]]
    toks = torch.tensor(tokens)
    pos = len(tokens)
    acts = {}
    x = W["wte.weight"][toks] + W["wpe.weight"][:pos]
    for layer in range(cfg["n_layer"]):
        p, h = f"h.{layer}.", f"blocks.{layer}."
        xn = layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps, acts, h + "ln1")
        qkv = xn @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]  # Conv1D: x (pos, in) @ (in, out)
        q, k, v = (t.reshape(pos, heads, dh) for t in qkv.split(d, -1))
        z = attention(q, k, v, acts, h)
        x = x + z @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        xn = layer_norm(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps, acts, None)
        hidden = act(xn @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
        x = x + hidden @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
        acts[h + "hook_resid_post"] = x
    xn = layer_norm(x, W["ln_f.weight"], W["ln_f.bias"], eps, acts, None)
    return xn @ W["wte.weight"].T, acts


# ---- LLaMA -----------------------------------------------------------------------------------------------------

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 96,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 500.0, "rope_scaling": None,
    "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu", "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02, "pretraining_tp": 1,
}


def llama_weights(cfg, rng):
    d, layers, vocab, mlp = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    dh = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * dh
    gauss = lambda *shape, s=0.2: (rng.standard_normal(shape) * s).astype(np.float32)
    ones = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    t = [("model.embed_tokens.weight", gauss(vocab, d, s=1.0))]
    for L in range(layers):
        p = f"model.layers.{L}."
        t += [(p + "input_layernorm.weight", ones(d)),
              (p + "self_attn.q_proj.weight", gauss(d, d)), (p + "self_attn.k_proj.weight", gauss(kv, d)),
              (p + "self_attn.v_proj.weight", gauss(kv, d)), (p + "self_attn.o_proj.weight", gauss(d, d)),
              (p + "post_attention_layernorm.weight", ones(d)),
              (p + "mlp.gate_proj.weight", gauss(mlp, d)), (p + "mlp.up_proj.weight", gauss(mlp, d)),
              (p + "mlp.down_proj.weight", gauss(d, mlp))]
    t += [("model.norm.weight", ones(d)), ("lm_head.weight", gauss(vocab, d))]
    return t


def llama_forward(cfg, W, tokens):
    d, heads, kv_heads = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh, eps, theta = d // heads, cfg["rms_norm_eps"], cfg["rope_theta"]
    pos = len(tokens)
    acts = {}
    x = W["model.embed_tokens.weight"][torch.tensor(tokens)]
    for layer in range(cfg["num_hidden_layers"]):
        p, h = f"model.layers.{layer}.", f"blocks.{layer}."
        xn = rms_norm(x, W[p + "input_layernorm.weight"], eps, acts, h + "ln1")
        q = (xn @ W[p + "self_attn.q_proj.weight"].T).reshape(pos, heads, dh)  # nn.Linear: (out, in)
        k = (xn @ W[p + "self_attn.k_proj.weight"].T).reshape(pos, kv_heads, dh)
        v = (xn @ W[p + "self_attn.v_proj.weight"].T).reshape(pos, kv_heads, dh)
        z = attention(rotary(q, theta, dh), rotary(k, theta, dh), v, acts, h)
        x = x + z @ W[p + "self_attn.o_proj.weight"].T
        xn = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps, acts, None)
        gate = xn @ W[p + "mlp.gate_proj.weight"].T
        hidden = gate * torch.sigmoid(gate) * (xn @ W[p + "mlp.up_proj.weight"].T)
        x = x + hidden @ W[p + "mlp.down_proj.weight"].T
        acts[h + "hook_resid_post"] = x
    xn = rms_norm(x, W["model.norm.weight"], eps, acts, None)
    return xn @ W["lm_head.weight"].T, acts


# ---- GPT-NeoX --------------------------------------------------------------------------------------------------

NEOX_CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 32, "intermediate_size": 128,
    "num_attention_heads": 2, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 64,
    "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
    "hidden_act": "gelu", "tie_word_embeddings": False, "attention_bias": True, "rope_scaling": None,
    "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.02,
}


def neox_weights(cfg, rng):
    d, layers, vocab, mlp = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    gauss = lambda *shape, s=0.2: (rng.standard_normal(shape) * s).astype(np.float32)
    ones = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    t = [("gpt_neox.embed_in.weight", gauss(vocab, d, s=1.0))]
    for L in range(layers):
        p = f"gpt_neox.layers.{L}."
        t += [(p + "input_layernorm.weight", ones(d)), (p + "input_layernorm.bias", gauss(d, s=0.1)),
              (p + "post_attention_layernorm.weight", ones(d)), (p + "post_attention_layernorm.bias", gauss(d, s=0.1)),
              (p + "attention.query_key_value.weight", gauss(3 * d, d)),
              (p + "attention.query_key_value.bias", gauss(3 * d, s=0.1)),
              (p + "attention.dense.weight", gauss(d, d)), (p + "attention.dense.bias", gauss(d, s=0.1)),
              (p + "mlp.dense_h_to_4h.weight", gauss(mlp, d)), (p + "mlp.dense_h_to_4h.bias", gauss(mlp, s=0.1)),
              (p + "mlp.dense_4h_to_h.weight", gauss(d, mlp)), (p + "mlp.dense_4h_to_h.bias", gauss(d, s=0.1))]
    t += [("gpt_neox.final_layer_norm.weight", ones(d)), ("gpt_neox.final_layer_norm.bias", gauss(d, s=0.1)),
          ("embed_out.weight", gauss(vocab, d))]
    return t


def neox_forward(cfg, W, tokens):
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    dh, eps = d // heads, cfg["layer_norm_eps"]
    rotary_dim = int(dh * cfg["rotary_pct"])
    pos = len(tokens)
    acts = {}
    x = W["gpt_neox.embed_in.weight"][torch.tensor(tokens)]
    for layer in range(cfg["num_hidden_layers"]):
        p, h = f"gpt_neox.layers.{layer}.", f"blocks.{layer}."
        xn = layer_norm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], eps, acts, h + "ln1")
        qkv = xn @ W[p + "attention.query_key_value.weight"].T + W[p + "attention.query_key_value.bias"]
        qkv = qkv.reshape(pos, heads, 3 * dh)  # per head: q (dh), k (dh), v (dh)
        q, k, v = qkv[..., :dh], qkv[..., dh:2 * dh], qkv[..., 2 * dh:]
        theta = float(cfg["rotary_emb_base"])
        z = attention(rotary(q, theta, rotary_dim), rotary(k, theta, rotary_dim), v, acts, h)
        attn_out = z @ W[p + "attention.dense.weight"].T + W[p + "attention.dense.bias"]
        mlp_in = x if cfg["use_parallel_residual"] else x + attn_out
        xn = layer_norm(mlp_in, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"], eps,
                        acts, None)
        hidden = gelu_erf(xn @ W[p + "mlp.dense_h_to_4h.weight"].T + W[p + "mlp.dense_h_to_4h.bias"])
        mlp_out = hidden @ W[p + "mlp.dense_4h_to_h.weight"].T + W[p + "mlp.dense_4h_to_h.bias"]
        x = x + attn_out + mlp_out
        acts[h + "hook_resid_post"] = x
    xn = layer_norm(x, W["gpt_neox.final_layer_norm.weight"], W["gpt_neox.final_layer_norm.bias"], eps, acts, None)
    return xn @ W["embed_out.weight"].T, acts


# ---- driver ----------------------------------------------------------------------------------------------------

def write_reference(path, tokens, logits, acts, metadata):
    tensors = [("tokens", np.array([tokens], dtype=np.float32)), ("logits", logits.numpy()[None])]
    for hook in sorted(acts):
        tensors.append((hook, acts[hook].numpy()[None]))
    write_safetensors(path, tensors, metadata)
    return len(tensors)


def check_float32(forward, cfg, W, tokens, logits, name):
    """The float32 run of the same maths agrees with float64 (a sanity check of the reference itself)."""
    logits32, _ = forward(cfg, {k: v.float() for k, v in W.items()}, tokens)
    drift = float((logits32.double() - logits).abs().max())
    if drift > 1e-3:
        sys.exit(f"{name}: float32 and float64 logits differ by {drift}")
    return drift


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_models = os.environ.get("MECHLENS_MODELS", os.path.join(here, "..", "..", "..", "shared", "models"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=default_models)
    parser.add_argument("--out", default=os.path.join(here, "fixtures", "huggingface"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    generator = "tests/reference/huggingface_reference.py (torch float64, the architectures' maths)"

    # 1. GPT-2 from the shared folder.
    folder = os.path.join(args.models, "hf", "tiny-random-gpt2")
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    weights_path = os.path.join(folder, "model.safetensors")
    with open(weights_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    W = read_safetensors(weights_path)
    tokens = TOKENS["gpt2"]
    logits, acts = gpt2_forward(cfg, W, tokens)
    drift = check_float32(gpt2_forward, cfg, W, tokens, logits, "gpt2")
    out = os.path.join(args.out, "gpt2_reference.safetensors")
    n = write_reference(out, tokens, logits, acts, {"model": "hf/tiny-random-gpt2/model.safetensors", "sha256": sha,
                                                    "generator": generator, "torch": torch.__version__})
    print(f"gpt2: {n} tensors, {os.path.getsize(out)} bytes, model sha256 {sha}, float32 drift {drift:.2g}")

    # 2. LLaMA in BF16: the reference runs on the rounded weights, read back from the written file.
    folder = os.path.join(args.out, "llama_bf16")
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), LLAMA_CONFIG)
    write_safetensors(os.path.join(folder, "model.safetensors"), llama_weights(LLAMA_CONFIG, np.random.default_rng(12)),
                      {"format": "pt"}, dtype="BF16")
    W = read_safetensors(os.path.join(folder, "model.safetensors"))
    tokens = TOKENS["llama"]
    logits, acts = llama_forward(LLAMA_CONFIG, W, tokens)
    drift = check_float32(llama_forward, LLAMA_CONFIG, W, tokens, logits, "llama")
    out = os.path.join(args.out, "llama_reference.safetensors")
    n = write_reference(out, tokens, logits, acts, {"model": "fixtures/huggingface/llama_bf16", "generator": generator,
                                                    "torch": torch.__version__})
    print(f"llama: {n} tensors, {os.path.getsize(out)} bytes, weights "
          f"{os.path.getsize(os.path.join(folder, 'model.safetensors'))} bytes, float32 drift {drift:.2g}")

    # 3. GPT-NeoX in two shards.
    folder = os.path.join(args.out, "neox_sharded")
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), NEOX_CONFIG)
    tensors = neox_weights(NEOX_CONFIG, np.random.default_rng(13))
    half = len(tensors) // 2
    shards = [tensors[:half], tensors[half:]]
    weight_map, total = {}, 0
    for index, shard in enumerate(shards):
        name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(folder, name), shard, {"format": "pt"})
        for tensor_name, array in shard:
            weight_map[tensor_name] = name
            total += array.size * 4
    write_json(os.path.join(folder, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    W = {}
    for name in sorted(set(weight_map.values())):
        W.update(read_safetensors(os.path.join(folder, name)))
    tokens = TOKENS["neox"]
    logits, acts = neox_forward(NEOX_CONFIG, W, tokens)
    drift = check_float32(neox_forward, NEOX_CONFIG, W, tokens, logits, "neox")
    out = os.path.join(args.out, "neox_reference.safetensors")
    n = write_reference(out, tokens, logits, acts, {"model": "fixtures/huggingface/neox_sharded",
                                                    "generator": generator, "torch": torch.__version__})
    print(f"neox: {n} tensors, {os.path.getsize(out)} bytes, float32 drift {drift:.2g}")

    # The same NeoX weights read as a sequential block with full rotary (use_parallel_residual false, rotary_pct 1):
    # checks the loader's tensor layout (query_key_value interleaving, biases) with the forward pass mechlens had
    # before parallel attention + MLP and partial rotary.
    sequential = dict(NEOX_CONFIG, use_parallel_residual=False, rotary_pct=1.0)
    logits, acts = neox_forward(sequential, W, tokens)
    out = os.path.join(args.out, "neox_sequential_reference.safetensors")
    n = write_reference(out, tokens, logits, acts, {"model": "fixtures/huggingface/neox_sharded read with "
                                                    "use_parallel_residual false and rotary_pct 1.0",
                                                    "generator": generator, "torch": torch.__version__})
    print(f"neox (sequential, full rotary): {n} tensors, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
