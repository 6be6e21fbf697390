#!/usr/bin/env python3
"""A reference LLaMA forward pass in PyTorch (float32, CPU), written from the maths, reading llama.cpp-style F32 GGUF
files (gguf_f32.py): RMSNorm, rotary position embeddings, grouped-query attention with a causal mask, SwiGLU MLP, and
a KV cache for decoding. It is the PyTorch column of the speed comparisons (bench_vs_llama_cpp.sh) and is checked
against mechlens's logits by check_against_mechlens.sh.

    /usr/bin/python3 bench/peers/pytorch/llama_reference.py --check FILE.gguf --tokens 1,403,407 [--out L.npy]
        [--all-positions] [--stepwise]
    /usr/bin/python3 bench/peers/pytorch/llama_reference.py --bench FILE.gguf --threads 1[,2] [--prefill 128]
        [--decode 128] [--repeat 1]

--check writes the logits of the last position, shape (vocab,), to --out (or prints its top 5 without --out);
--all-positions writes every position's, shape (positions, vocab) as `mechlens logits` does; --stepwise computes
them with one KV-cached single-token step per position instead of one forward over the whole prompt.
--bench prints CSV lines `pytorch,<file>,prefill128,<threads>,<tokens/s>` (one forward over the prompt 1..N mod
vocab, logits of the last position only: llama-bench's pp128) and `pytorch,<file>,decode128,<threads>,<tokens/s>`
(N single-token steps through a KV cache from an empty context, every step timed: llama-bench's tg128), after one
untimed warm-up of each, for each thread count of --threads; --repeat R reports the mean rate of R timed runs.
Threads: torch.set_num_threads(T) and openblas_set_num_threads(T) (see set_threads).

Rotary pairs: llama.cpp's converter permutes the rows of attn_q and attn_k within each head so that rotary rotates
adjacent dimensions (2i, 2i+1) by position * base^(-2i / d_head); llama2.c and Hugging Face checkpoints rotate
(i, i + d_head / 2) instead. --rope-pairs adjacent (the default) is the one that reproduces mechlens on GGUF files.
"""
import argparse
import ctypes
import math
import os
import sys
import time

# Before torch loads libgomp (it reads this once): torch's own ops run on OpenMP threads and its matrix products on
# OpenBLAS's pthreads, and OpenMP threads spinning after each parallel region took the cores OpenBLAS's threads
# needed. Measured at 2 threads on this 2-core machine (stories15M, idle): prefill 376-4,482 tokens/s with libgomp's
# default, 4,466-6,525 with PASSIVE; 1 thread unchanged. An OMP_WAIT_POLICY set by the caller wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_f32 import read_gguf  # noqa: E402


def set_threads(n):
    """torch.set_num_threads(n), and the same for OpenBLAS: Debian's torch calls the system BLAS, whose pthread
    OpenBLAS otherwise keeps its own default (every core) whatever torch was told."""
    torch.set_num_threads(n)
    for name in ("libopenblas.so.0", "libopenblas.so"):
        try:
            ctypes.CDLL(name).openblas_set_num_threads(n)
            return
        except (OSError, AttributeError):
            pass


def keep_freed_memory():
    """Keeps glibc's malloc from returning freed activations to the system: by default a block of 128 KiB or more is
    mmap'ed and unmapped again, and the heap top is trimmed, so each op's output page-faults afresh (with transparent
    huge pages 'always', 2 MiB at a time). Measured here: 4,400 page faults and 25 ms of system time per stories15M
    prefill, 3x slower; mallopt(M_MMAP_THRESHOLD, 32 MiB) and mallopt(M_TRIM_THRESHOLD, huge) remove them (what a
    jemalloc or tcmalloc preload also does for PyTorch)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, ctypes.c_int(2**31 - 1))  # M_TRIM_THRESHOLD
        libc.mallopt(-3, ctypes.c_int(32 << 20))  # M_MMAP_THRESHOLD (its maximum on 64-bit glibc)
    except (OSError, AttributeError):
        pass


def linear(x, w):
    """x @ w.T. A single row goes through torch.mv (BLAS's gemv): with one row, OpenBLAS's sgemm (torch's
    F.linear) ran 3-6x slower than its sgemv here, which would make every decode step slower for no reason."""
    if x.numel() == x.shape[-1]:
        return torch.mv(w, x.reshape(-1)).view(*x.shape[:-1], w.shape[0])
    return torch.nn.functional.linear(x, w)


class Config:
    def __init__(self, metadata, tensors):
        arch = metadata.get("general.architecture", "llama")
        if arch != "llama":
            raise ValueError(f"architecture {arch!r}: only llama is supported")

        def get(key, default=None):
            value = metadata.get("llama." + key, default)
            if value is None:
                raise ValueError(f"metadata llama.{key} is missing")
            return value

        self.d_model = int(get("embedding_length"))
        self.n_layers = int(get("block_count"))
        self.n_heads = int(get("attention.head_count"))
        self.n_kv_heads = int(get("attention.head_count_kv", self.n_heads))
        self.rope_base = float(get("rope.freq_base", 10000.0))
        self.eps = float(get("attention.layer_norm_rms_epsilon"))
        self.n_ctx = int(get("context_length"))
        self.d_head = self.d_model // self.n_heads
        self.n_rot = int(get("rope.dimension_count", self.d_head))
        self.vocab = tensors["token_embd.weight"].shape[0]
        if self.n_heads % self.n_kv_heads or self.n_rot % 2 or self.n_rot > self.d_head:
            raise ValueError("unsupported head layout")


class RMSNorm(torch.nn.Module):
    def __init__(self, weight, eps):
        super().__init__()
        self.weight, self.eps = weight, eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary:
    """cos and sin of position * base^(-2i / n_rot) for every position and pair i < n_rot / 2 (n_rot: d_head unless
    llama.rope.dimension_count says fewer; the dimensions after n_rot are not rotated)."""

    def __init__(self, cfg, pairs):
        i = torch.arange(0, cfg.n_rot // 2, dtype=torch.float64)
        freq = cfg.rope_base ** (-2.0 * i / cfg.n_rot)
        angle = torch.arange(cfg.n_ctx, dtype=torch.float64)[:, None] * freq[None, :]
        self.cos, self.sin = angle.cos().float(), angle.sin().float()
        self.n_rot, self.pairs = cfg.n_rot, pairs

    def __call__(self, x, start):
        """x: (batch, heads, positions, d_head), positions start, start + 1, ..."""
        n = x.shape[-2]
        cos, sin = self.cos[start:start + n], self.sin[start:start + n]
        rot, rest = x[..., :self.n_rot], x[..., self.n_rot:]
        if self.pairs == "adjacent":
            pair = rot.unflatten(-1, (self.n_rot // 2, 2))
            a, b = pair[..., 0], pair[..., 1]
            rot = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        else:
            a, b = rot[..., :self.n_rot // 2], rot[..., self.n_rot // 2:]
            rot = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
        return rot if rest.shape[-1] == 0 else torch.cat((rot, rest), dim=-1)


class KVCache:
    """Keys and values of every layer for positions [0, length), preallocated for max_positions."""

    def __init__(self, cfg, batch, max_positions):
        shape = (batch, cfg.n_kv_heads, max_positions, cfg.d_head)
        self.k = [torch.empty(shape) for _ in range(cfg.n_layers)]
        self.v = [torch.empty(shape) for _ in range(cfg.n_layers)]
        self.length = 0


class Attention(torch.nn.Module):
    def __init__(self, cfg, w, p, rotary):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (w[p + n + ".weight"] for n in ("attn_q", "attn_k", "attn_v", "attn_output"))
        self.cfg, self.rotary = cfg, rotary
        self.hook_z = torch.nn.Identity()  # z (batch, positions, heads * d_head) before W_O, for forward hooks

    def forward(self, x, layer, cache, start):
        cfg = self.cfg
        batch, n, _ = x.shape
        q = linear(x, self.wq).view(batch, n, cfg.n_heads, cfg.d_head).transpose(1, 2)
        k = linear(x, self.wk).view(batch, n, cfg.n_kv_heads, cfg.d_head).transpose(1, 2)
        v = linear(x, self.wv).view(batch, n, cfg.n_kv_heads, cfg.d_head).transpose(1, 2)
        q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None:
            cache.k[layer][:, :, start:start + n] = k
            cache.v[layer][:, :, start:start + n] = v
            k, v = cache.k[layer][:, :, :start + n], cache.v[layer][:, :, :start + n]
        # Query head h reads key/value head h // group: split the query heads into (kv head, group).
        group = cfg.n_heads // cfg.n_kv_heads
        q = q.reshape(batch, cfg.n_kv_heads, group * n, cfg.d_head)
        scores = torch.matmul(q, k.transpose(-1, -2)).view(batch, cfg.n_kv_heads, group, n, start + n)
        scores = scores * (1.0 / math.sqrt(cfg.d_head))
        if n > 1:  # query i (position start + i) sees keys 0 .. start + i
            mask = torch.ones(n, start + n, dtype=torch.bool).triu(start + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).view(batch, cfg.n_kv_heads, group * n, start + n)
        z = torch.matmul(probs, v).view(batch, cfg.n_heads, n, cfg.d_head)
        z = self.hook_z(z.transpose(1, 2).reshape(batch, n, cfg.n_heads * cfg.d_head))
        return linear(z, self.wo)


class MLP(torch.nn.Module):
    def __init__(self, w, p):
        super().__init__()
        self.gate, self.up, self.down = (w[p + n + ".weight"] for n in ("ffn_gate", "ffn_up", "ffn_down"))

    def forward(self, x):
        return linear(torch.nn.functional.silu(linear(x, self.gate)) * linear(x, self.up), self.down)


class Block(torch.nn.Module):
    """One transformer block; its output is the residual stream after it (TransformerLens's hook_resid_post)."""

    def __init__(self, cfg, w, layer, rotary):
        super().__init__()
        p = f"blk.{layer}."
        self.layer = layer
        self.attn_norm = RMSNorm(w[p + "attn_norm.weight"], cfg.eps)
        self.attn = Attention(cfg, w, p, rotary)
        self.ffn_norm = RMSNorm(w[p + "ffn_norm.weight"], cfg.eps)
        self.mlp = MLP(w, p)

    def forward(self, x, cache=None, start=0):
        x = x + self.attn(self.attn_norm(x), self.layer, cache, start)
        return x + self.mlp(self.ffn_norm(x))


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (harvest_pytorch.py: the blocks after the captured one)."""


class Llama(torch.nn.Module):
    def __init__(self, path, rope_pairs="adjacent"):
        super().__init__()
        metadata, arrays = read_gguf(path, mode="c")  # copy-on-write mapping: writable for torch, file untouched
        self.cfg = cfg = Config(metadata, arrays)
        w = {name: torch.from_numpy(a) for name, a in arrays.items()}
        rotary = Rotary(cfg, rope_pairs)
        self.embed = w["token_embd.weight"]
        self.blocks = torch.nn.ModuleList(Block(cfg, w, i, rotary) for i in range(cfg.n_layers))
        self.norm = RMSNorm(w["output_norm.weight"], cfg.eps)
        self.unembed = w.get("output.weight", self.embed)  # tied when the file has no output.weight

    def forward(self, tokens, cache=None, last_only=False):
        """tokens: (batch, positions) int64; with a cache, they continue the cache's positions. Returns logits of
        shape (batch, positions, vocab), or (batch, 1, vocab) with last_only."""
        start = cache.length if cache is not None else 0
        x = self.embed[tokens]
        for block in self.blocks:
            x = block(x, cache, start)
        if cache is not None:
            cache.length = start + tokens.shape[1]
        if last_only:
            x = x[:, -1:]
        return linear(self.norm(x), self.unembed)


def check(args):
    model = Llama(args.check, args.rope_pairs)
    tokens = torch.tensor([[int(t) for t in args.tokens.split(",")]], dtype=torch.int64)
    with torch.inference_mode():
        if args.stepwise:
            cache = KVCache(model.cfg, 1, tokens.shape[1])
            logits = torch.cat([model(tokens[:, i:i + 1], cache) for i in range(tokens.shape[1])], dim=1)
        else:
            logits = model(tokens)
    out = logits[0].numpy() if args.all_positions else logits[0, -1].numpy()
    if args.out:
        np.save(args.out, out)
    else:
        last = logits[0, -1]
        top = torch.topk(last, min(5, last.shape[0]))
        print("last position, top 5:", ", ".join(f"{i}: {v:.4f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))


def bench(args):
    keep_freed_memory()
    model = Llama(args.bench, args.rope_pairs)
    vocab, name = model.cfg.vocab, os.path.basename(args.bench)
    prompt = torch.tensor([[i % vocab for i in range(1, args.prefill + 1)]], dtype=torch.int64)
    steps = torch.tensor([[i % vocab for i in range(1, args.decode + 1)]], dtype=torch.int64)

    def prefill():
        model(prompt, last_only=True)

    def decode():
        cache = KVCache(model.cfg, 1, args.decode)
        for i in range(args.decode):
            model(steps[:, i:i + 1], cache, last_only=True)

    with torch.inference_mode():
        for threads in [int(t) for t in args.threads.split(",")]:
            set_threads(threads)
            for test, run, count in (("prefill", prefill, args.prefill), ("decode", decode, args.decode)):
                if count == 0:
                    continue
                run()  # warm-up: page faults of the mapping, allocator, thread pools
                rates = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    run()
                    rates.append(count / (time.perf_counter() - t0))
                print(f"pytorch,{name},{test}{count},{threads},{sum(rates) / len(rates):.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", metavar="FILE", help="compute logits of --tokens")
    mode.add_argument("--bench", metavar="FILE", help="time prefill and decode")
    ap.add_argument("--tokens", default="1,403,407,261,378")
    ap.add_argument("--out", help="--check: write the logits here (.npy)")
    ap.add_argument("--all-positions", action="store_true", help="--check: every position's logits (positions, vocab)")
    ap.add_argument("--stepwise", action="store_true", help="--check: one KV-cached single-token step per position")
    ap.add_argument("--decode", type=int, default=128, help="--bench: decoded tokens")
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--threads", default="1", help="--bench: threads, or a comma-separated list (1,2)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--rope-pairs", choices=("adjacent", "half"), default="adjacent")
    args = ap.parse_args()
    check(args) if args.check else bench(args)


if __name__ == "__main__":
    main()
