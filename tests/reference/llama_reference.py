#!/usr/bin/python3
"""Independent PyTorch reference of the LLaMA architecture (llama2.c flavour) for stories260K.

Reads the llama2.c legacy checkpoint and tokenizer with numpy/struct, runs the forward pass in
float64 from the float32 weights, and writes TransformerLens-named activation fixtures that the
C++ tests compare against. Run with Debian's python (it has torch):

    /usr/bin/python3 tests/reference/llama_reference.py --models ../shared/models --out tests/reference/fixtures

Re-running regenerates byte-identical files (single-threaded torch, no timestamps).
"""

import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch

MODEL_SHA256 = "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"
MODEL_NAME = "stories260K"
RMS_EPS = 1e-5
ROPE_THETA = 10000.0
BOS = 1
GREEDY_NEW_TOKENS = 40
GREEDY_EXPECTED = (", there was a little girl named Lily. She loved to play outside in the park. "
                   "One day, she saw a big, red ball.")

PROMPTS = [
    ("p0", "Once upon a time"),
    ("p1", "Lily and Tom went to the park. Lily gave Tom a"),
    ("p2", "The cat sat on the mat because it was"),
]

CONVENTIONS = {
    "dtype": "float32 .npy (C order, little endian) computed in float64 and rounded once; tokens int32",
    "batch_dim": "every activation keeps a leading batch dimension of 1",
    "rmsnorm": "hook_scale = sqrt(mean(x^2, -1) + 1e-5), shape (1,pos,1); hook_normalized = x / hook_scale "
               "WITHOUT the RMSNorm gain (TransformerLens folds gains into the next weights; we do not fold, "
               "so the gain is applied when computing q/k/v, mlp.hook_pre/pre_linear and logits)",
    "qkv": "hook_q (1,pos,n_heads,d_head); hook_k/hook_v (1,pos,n_kv_heads,d_head); before rotary; "
           "computed from the gained normalized input",
    "rotary": "hook_rot_q/hook_rot_k after rotary on ADJACENT pairs (2i,2i+1) of each head, "
              "angle = pos * 10000^(-2i/d_head), pos starting at 0",
    "gqa": "query head h reads kv head h // (n_heads / n_kv_heads)",
    "attn_scores": "hook_attn_scores (1,n_heads,qpos,kpos) = q.k/sqrt(d_head), causally masked entries are -inf",
    "pattern": "hook_pattern (1,n_heads,qpos,kpos) softmax over kpos; masked entries exactly 0",
    "mlp": "mlp.hook_pre = xn2 W1^T (gate pre-activation), mlp.hook_pre_linear = xn2 W3^T, "
           "mlp.hook_post = silu(pre) * pre_linear; xn2 includes the ln2 gain",
    "logits": "logits (1,pos,vocab) = (ln_final.hook_normalized * rms_final) @ W_U",
    "greedy": "greedy.npy int32 shape (40,) = only the 40 new tokens after prompt p0 (argmax each step, "
              "full-precision float64 forward); greedy.txt = decoded text of BOS + prompt + new tokens "
              "per run.c (leading space of the first piece after BOS stripped, <0xXX> pieces are raw bytes)",
}


# --------------------------------------------------------------------------------------------------
# Checkpoint and tokenizer readers


def read_checkpoint(path):
    """Reads a llama2.c legacy .bin checkpoint into a config dict and a dict of float32 numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 28:
        raise ValueError(f"{path}: too short for the 28-byte header")
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("<7i", data, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len) <= 0:
        raise ValueError(f"{path}: non-positive header field")
    if dim % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"{path}: heads do not divide dim / kv heads")
    head = dim // n_heads
    kv_dim = head * n_kv_heads
    cfg = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
               vocab_size=vocab, seq_len=seq_len, head_size=head, kv_dim=kv_dim, shared_classifier=shared)
    offset = 28
    w = {}

    def take(name, shape):
        nonlocal offset
        count = int(np.prod(shape))
        end = offset + 4 * count
        if end > len(data):
            raise ValueError(f"{path}: truncated while reading {name}")
        w[name] = np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape).copy()
        offset = end

    L = n_layers
    take("token_embedding", (vocab, dim))
    take("rms_att", (L, dim))
    take("wq", (L, dim, dim))
    take("wk", (L, kv_dim, dim))
    take("wv", (L, kv_dim, dim))
    take("wo", (L, dim, dim))
    take("rms_ffn", (L, dim))
    take("w1", (L, hidden, dim))
    take("w2", (L, dim, hidden))
    take("w3", (L, hidden, dim))
    take("rms_final", (dim,))
    take("freq_cis_real", (seq_len * head // 2,))  # unused legacy rotary tables
    take("freq_cis_imag", (seq_len * head // 2,))
    if shared:
        w["wcls"] = w["token_embedding"]
    else:
        take("wcls", (vocab, dim))
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} unexpected trailing bytes")
    return cfg, w


class Tokenizer:
    """llama2.c's BPE tokenizer, re-implemented from its tokenizer.bin format and algorithm."""

    def __init__(self, path, vocab_size):
        with open(path, "rb") as f:
            data = f.read()
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        offset = 4
        self.pieces = []
        self.scores = []
        while offset < len(data):
            if offset + 8 > len(data):
                raise ValueError(f"{path}: truncated token record")
            score, length = struct.unpack_from("<fi", data, offset)
            offset += 8
            if length < 0 or offset + length > len(data):
                raise ValueError(f"{path}: bad token length {length}")
            self.pieces.append(data[offset:offset + length])
            self.scores.append(score)
            offset += length
        if len(self.pieces) != vocab_size:
            raise ValueError(f"{path}: {len(self.pieces)} tokens, model expects {vocab_size}")
        self.lookup = {}
        for i, piece in enumerate(self.pieces):
            self.lookup.setdefault(piece, i)  # first id wins on duplicate pieces

    def encode(self, text, bos=True):
        raw = text.encode("utf-8")
        tokens = [BOS] if bos else []
        if raw:
            tokens.append(self.lookup[b" "])  # dummy prefix, as sentencepiece's add_dummy_prefix
        i = 0
        while i < len(raw):
            # one UTF-8 codepoint: a lead byte plus its continuation bytes (at most 4 bytes total)
            j = i + 1
            while j < len(raw) and (raw[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            cp = raw[i:j]
            if cp in self.lookup:
                tokens.append(self.lookup[cp])
            else:
                tokens.extend(b + 3 for b in cp)  # byte fallback: <0x00> is id 3
            i = j
        while True:
            best_score, best_id, best_idx = -1e10, -1, -1
            for k in range(len(tokens) - 1):
                merged = self.pieces[tokens[k]] + self.pieces[tokens[k + 1]]
                tid = self.lookup.get(merged)
                if tid is not None and self.scores[tid] > best_score:
                    best_score, best_id, best_idx = self.scores[tid], tid, k
            if best_idx < 0:
                break
            tokens[best_idx:best_idx + 2] = [best_id]
        return tokens

    def decode_piece(self, prev, token):
        piece = self.pieces[token]
        if prev == BOS and piece.startswith(b" "):
            piece = piece[1:]
        if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return piece

    def decode(self, tokens):
        out = b""
        prev = None
        for t in tokens:
            if t != BOS:  # run.c never prints the BOS prompt token itself
                out += self.decode_piece(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------------
# Model


class Llama:
    """The LLaMA forward pass written from the equations; all maths in `dtype`."""

    def __init__(self, cfg, weights, dtype=torch.float64):
        self.cfg = cfg
        self.dtype = dtype
        self.w = {k: torch.from_numpy(v).to(dtype) for k, v in weights.items()
                  if not k.startswith("freq_cis")}

    def rmsnorm(self, x):
        scale = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
        return scale, x / scale

    def rotary(self, x, positions):
        """x: (batch, pos, heads, d_head); rotates adjacent pairs (2i, 2i+1)."""
        d_head = x.shape[-1]
        i = torch.arange(0, d_head, 2, dtype=torch.float64)
        inv_freq = ROPE_THETA ** (-i / d_head)  # (d_head/2,)
        angle = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (pos, d_head/2)
        cos = torch.cos(angle).to(self.dtype)[None, :, None, :]
        sin = torch.sin(angle).to(self.dtype)[None, :, None, :]
        x0 = x[..., 0::2]
        x1 = x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def forward(self, tokens, cache=None, start_pos=0, hooks=None):
        """tokens: (batch, pos) int64. With `cache` (dict of per-layer k/v lists), appends to it.

        Returns logits (batch, pos, vocab); fills `hooks` (name -> tensor) when given.
        """
        c = self.cfg
        w = self.w
        n_heads, n_kv, d_head = c["n_heads"], c["n_kv_heads"], c["head_size"]
        group = n_heads // n_kv
        batch, n_pos = tokens.shape
        positions = torch.arange(start_pos, start_pos + n_pos)

        def hook(name, value):
            if hooks is not None:
                hooks[name] = value
            return value

        x = hook("hook_embed", w["token_embedding"][tokens])  # (batch, pos, d_model)
        for layer in range(c["n_layers"]):
            p = f"blocks.{layer}."
            hook(p + "hook_resid_pre", x)
            scale, normed = self.rmsnorm(x)
            hook(p + "ln1.hook_scale", scale)
            hook(p + "ln1.hook_normalized", normed)
            xn = normed * w["rms_att"][layer]
            q = (xn @ w["wq"][layer].T).reshape(batch, n_pos, n_heads, d_head)
            k = (xn @ w["wk"][layer].T).reshape(batch, n_pos, n_kv, d_head)
            v = (xn @ w["wv"][layer].T).reshape(batch, n_pos, n_kv, d_head)
            hook(p + "attn.hook_q", q)
            hook(p + "attn.hook_k", k)
            hook(p + "attn.hook_v", v)
            q = hook(p + "attn.hook_rot_q", self.rotary(q, positions))
            k = hook(p + "attn.hook_rot_k", self.rotary(k, positions))
            if cache is not None:
                cache.setdefault(layer, {"k": [], "v": []})
                cache[layer]["k"].append(k)
                cache[layer]["v"].append(v)
                k_all = torch.cat(cache[layer]["k"], dim=1)
                v_all = torch.cat(cache[layer]["v"], dim=1)
            else:
                k_all, v_all = k, v
            n_key = k_all.shape[1]
            # query head h reads kv head h // group: repeat each kv head `group` times consecutively
            k_rep = k_all.repeat_interleave(group, dim=2)  # (batch, kpos, n_heads, d_head)
            v_rep = v_all.repeat_interleave(group, dim=2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k_rep) / np.sqrt(d_head)
            q_abs = positions[:, None]
            k_abs = torch.arange(n_key)[None, :]
            scores = scores.masked_fill(k_abs > q_abs, float("-inf"))
            hook(p + "attn.hook_attn_scores", scores)
            pattern = hook(p + "attn.hook_pattern", torch.softmax(scores, dim=-1))
            z = hook(p + "attn.hook_z", torch.einsum("bhqk,bkhd->bqhd", pattern, v_rep))
            attn_out = hook(p + "hook_attn_out", z.reshape(batch, n_pos, n_heads * d_head) @ w["wo"][layer].T)
            x = hook(p + "hook_resid_mid", x + attn_out)
            scale2, normed2 = self.rmsnorm(x)
            hook(p + "ln2.hook_scale", scale2)
            hook(p + "ln2.hook_normalized", normed2)
            xn2 = normed2 * w["rms_ffn"][layer]
            pre = hook(p + "mlp.hook_pre", xn2 @ w["w1"][layer].T)
            pre_linear = hook(p + "mlp.hook_pre_linear", xn2 @ w["w3"][layer].T)
            post = hook(p + "mlp.hook_post", torch.nn.functional.silu(pre) * pre_linear)
            mlp_out = hook(p + "hook_mlp_out", post @ w["w2"][layer].T)
            x = hook(p + "hook_resid_post", x + mlp_out)
        scale_f, normed_f = self.rmsnorm(x)
        hook("ln_final.hook_scale", scale_f)
        hook("ln_final.hook_normalized", normed_f)
        return (normed_f * w["rms_final"]) @ w["wcls"].T  # (batch, pos, vocab)


def hook_names(n_layers):
    names = ["hook_embed"]
    per_layer = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized",
                 "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k",
                 "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
                 "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
                 "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{n}" for n in per_layer]
    names += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    return names


def greedy(model, prompt_tokens, n_new):
    tokens = list(prompt_tokens)
    for _ in range(n_new):
        logits = model.forward(torch.tensor([tokens]))
        tokens.append(int(torch.argmax(logits[0, -1])))
    return tokens[len(prompt_tokens):]


# --------------------------------------------------------------------------------------------------
# Fixture writing


def save_npy(path, array, dtype):
    array = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    np.save(path, array, allow_pickle=False)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_models_dir():
    env = os.environ.get("MECHLENS_MODELS")
    if env:
        return env
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(repo_root, "..", "shared", "models")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=default_models_dir(),
                        help="shared models directory (default: $MECHLENS_MODELS or <repo>/../shared/models)")
    parser.add_argument("--out", default=os.path.join(here, "fixtures"), help="fixture root directory")
    args = parser.parse_args()

    torch.set_num_threads(1)  # reproducible reductions, hence byte-identical fixtures
    model_path = os.path.join(args.models, MODEL_NAME, "stories260K.bin")
    tok_path = os.path.join(args.models, MODEL_NAME, "tok512.bin")
    digest = sha256_file(model_path)
    if digest != MODEL_SHA256:
        sys.exit(f"{model_path}: sha256 {digest} != expected {MODEL_SHA256}")

    cfg, weights = read_checkpoint(model_path)
    tok = Tokenizer(tok_path, cfg["vocab_size"])
    got = tok.encode("Once upon a time")
    assert got == [1, 403, 407, 261, 378], got

    model64 = Llama(cfg, weights, torch.float64)
    model32 = Llama(cfg, weights, torch.float32)
    names = hook_names(cfg["n_layers"])
    out_root = os.path.join(args.out, MODEL_NAME)
    manifest_prompts = []
    hook_shapes = None

    for pid, text in PROMPTS:
        ids = tok.encode(text, bos=True)
        tokens = torch.tensor([ids], dtype=torch.int64)
        hooks = {}
        logits = model64.forward(tokens, hooks=hooks)
        assert list(hooks) == names, "hook order/name mismatch"

        # internal checks: float32 run of the same code, and KV-cached incremental == full forward
        diff32 = float((model32.forward(tokens).to(torch.float64) - logits).abs().max())
        cache = {}
        steps = [model64.forward(tokens[:, i:i + 1], cache=cache, start_pos=i) for i in range(len(ids))]
        diff_kv = float((torch.cat(steps, dim=1) - logits).abs().max())
        print(f"{pid}: {len(ids)} tokens, max|logits64 - logits32| = {diff32:.3e}, "
              f"max|kv-cached - full| = {diff_kv:.3e}")
        assert diff32 < 1e-4 and diff_kv < 1e-10

        d = os.path.join(out_root, pid)
        os.makedirs(d, exist_ok=True)
        save_npy(os.path.join(d, "tokens.npy"), np.array([ids]), "int32")
        with open(os.path.join(d, "prompt.txt"), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        save_npy(os.path.join(d, "logits.npy"), logits.numpy(), "float32")
        for name in names:
            save_npy(os.path.join(d, name + ".npy"), hooks[name].numpy(), "float32")
        if hook_shapes is None:
            hook_shapes = {n: ["pos" if s == len(ids) else s for s in hooks[n].shape] for n in names}
        entry = {"id": pid, "text": text, "tokens": ids, "n_tokens": len(ids)}

        if pid == "p0":
            new = greedy(model64, ids, GREEDY_NEW_TOKENS)
            full_text = tok.decode(ids + new)
            print(f"greedy: {full_text!r}")
            if not full_text.startswith(text + GREEDY_EXPECTED):
                sys.exit("greedy continuation differs from llama2.c's published output")
            save_npy(os.path.join(d, "greedy.npy"), np.array(new), "int32")
            with open(os.path.join(d, "greedy.txt"), "w", encoding="utf-8", newline="\n") as f:
                f.write(full_text)
            entry["greedy_new_tokens"] = new
            entry["greedy_text"] = full_text
        manifest_prompts.append(entry)

    manifest = {
        "model": {"name": MODEL_NAME, "file": f"{MODEL_NAME}/stories260K.bin", "sha256": MODEL_SHA256,
                  "tokenizer": f"{MODEL_NAME}/tok512.bin", "config": cfg,
                  "rms_eps": RMS_EPS, "rope_theta": ROPE_THETA},
        "generator": {"script": "tests/reference/llama_reference.py", "torch": torch.__version__,
                      "numpy": np.__version__, "compute_dtype": "float64", "stored_dtype": "float32"},
        "conventions": CONVENTIONS,
        "files_per_prompt": ["tokens.npy", "prompt.txt", "logits.npy"] + [n + ".npy" for n in names],
        "hook_names": names,
        "hook_shapes": hook_shapes,
        "prompts": manifest_prompts,
    }
    with open(os.path.join(out_root, "manifest.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote fixtures to {out_root}")


if __name__ == "__main__":
    main()
