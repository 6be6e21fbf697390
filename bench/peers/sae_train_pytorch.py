#!/usr/bin/env python3
"""PyTorch peer of bench/bench_sae_train.cpp: the same SAE training step (SAELens 6's definitions: standard with
L1 weighted by decoder norms, coefficient 5; topk with k 32), batch 4096, Adam (0.9, 0.999) at lr 3e-4, gradients
clipped to norm 1, decoder rows initialised to norm 0.1 with W_enc = W_dec^T, on the same kind of data (Gaussian
noise plus 4 of 64 strong directions per row). CPU, float32, torch.set_num_threads(1) and (2). Prints tokens/s
and the last step's L0 per configuration.

    /usr/bin/python3 bench/peers/sae_train_pytorch.py [--steps N] [--shapes 64x1024,64x2048,512x8192]

Like the C++ benchmark, it times steps 3 to 18 of a fresh SAE (d_in 64), or steps 3 and 4 (larger shapes).
Threads and memory are set up as in pytorch/llama_reference.py (whose notes give the measurements): OpenBLAS gets
the thread count too, OpenMP threads sleep when idle, and freed activations stay with the allocator.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see llama_reference.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch"))
from llama_reference import keep_freed_memory, set_threads  # noqa: E402

import torch  # noqa: E402


def data(d_in, rows, seed=7):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(64, d_in, generator=g) / d_in ** 0.5
    x = 0.3 * torch.randn(rows, d_in, generator=g) / d_in ** 0.5
    for _ in range(4):
        u = 3.0 * torch.rand(rows, 1, generator=g)
        pick = torch.randint(0, 64, (rows,), generator=g)
        x += u * dirs[pick]
    return x


class SAE(torch.nn.Module):
    def __init__(self, d_in, d_sae, topk, k=32):
        super().__init__()
        w_dec = torch.empty(d_sae, d_in).uniform_(-1, 1)
        w_dec = 0.1 * w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(w_dec.t().clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.topk, self.k = topk, k

    def loss(self, x, l1):
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if self.topk:
            vals, idx = pre.topk(self.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        else:
            acts = torch.relu(pre)
        out = acts @ self.W_dec + self.b_dec
        mse = (out - x).pow(2).sum(-1).mean()
        if self.topk:
            return mse, acts
        sparsity = (acts * self.W_dec.norm(dim=1)).sum(-1).mean()
        return mse + l1 * sparsity, acts


def run(d_in, d_sae, topk, threads, steps, batch=4096):
    set_threads(threads)
    torch.manual_seed(0)
    x_all = data(d_in, 8 * batch)
    sae = SAE(d_in, d_sae, topk)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    step = 0
    l0 = 0.0

    def one():
        nonlocal step, l0
        x = x_all[(step % 8) * batch:(step % 8 + 1) * batch]
        loss, acts = sae.loss(x, 5.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        l0 = (acts > 0).float().sum(-1).mean().item()
        step += 1

    one()
    one()
    start = time.perf_counter()
    for _ in range(steps):  # steps 3 .. steps + 2, as the C++ benchmark
        one()
    elapsed = time.perf_counter() - start
    return batch * steps / elapsed, l0, elapsed / steps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=0, help="timed steps (default 16 for d_in 64, 2 above)")
    p.add_argument("--shapes", default="64x1024,64x2048,512x8192")
    p.add_argument("--threads", default="1,2")
    a = p.parse_args()
    keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    for threads in [int(t) for t in a.threads.split(",")]:
        for topk in (False, True):
            for shape in a.shapes.split(","):
                d_in, d_sae = (int(v) for v in shape.split("x"))
                steps = a.steps or (16 if d_in <= 64 else 2)
                tps, l0, per = run(d_in, d_sae, topk, threads, steps)
                print(f"pytorch {'topk' if topk else 'standard'} d_in={d_in} d_sae={d_sae} threads={threads}: "
                      f"{per * 1e3:.1f} ms/step, {tps:,.0f} tokens/s, L0 {l0:.1f}", flush=True)


if __name__ == "__main__":
    main()
