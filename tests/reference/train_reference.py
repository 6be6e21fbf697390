#!/usr/bin/python3
"""Reference numbers for the training utilities and head detectors (tests/unit/test_training.cpp).

Writes, under tests/reference/fixtures/train/:
  adamw.json           torch.optim.AdamW on small float32 vectors: several steps per case, weight decay on and off,
                       custom betas/eps, a learning rate changed between steps, and two parameter groups (decay on
                       the first range only); parameters after every step, moments after the last.
  clip.json            torch.nn.utils.clip_grad_norm_ over two tensors: the returned norm and the clipped gradients.
  head_detectors.json  previous-token / duplicate-token / induction scores ("mul" measure of TransformerLens's
                       head_detector.py, re-implemented here in numpy) for every (layer, head) of the committed
                       stories260K attention patterns (fixtures/stories260K/p*/blocks.L.attn.hook_pattern.npy), with
                       each combination of exclude_bos / exclude_current_token; plus a random batched case.

Run from the repository root with Debian's interpreter (torch 1.13, numpy 1.24); nothing is downloaded and
re-running writes byte-identical files:
    /usr/bin/python3 tests/reference/train_reference.py
"""
import json
import pathlib

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent
FIXTURES = ROOT / "fixtures"
OUT = FIXTURES / "train"


def floats(a):
    """float32 values as exact Python floats (JSON round-trips them)."""
    return [float(x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


def adamw_case(name, rng, n, steps, lr, betas, eps, weight_decay, decay_end=None, lr_per_step=None):
    params0 = (rng.standard_normal(n) * 0.5).astype(np.float32)
    grads = []
    for s in range(steps):
        g = rng.standard_normal(n) * (10.0 ** rng.uniform(-3, 1, n))
        g[(s + 1) % n] = 0.0  # a zero gradient now and then
        grads.append(g.astype(np.float32))
    if decay_end is None:
        tensors = [torch.tensor(params0.copy(), requires_grad=True)]
        groups = [{"params": tensors, "weight_decay": weight_decay}]
    else:
        tensors = [torch.tensor(params0[:decay_end].copy(), requires_grad=True),
                   torch.tensor(params0[decay_end:].copy(), requires_grad=True)]
        groups = [{"params": [tensors[0]], "weight_decay": weight_decay},
                  {"params": [tensors[1]], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    after = []
    for s in range(steps):
        if lr_per_step is not None:
            for group in opt.param_groups:
                group["lr"] = lr_per_step[s]
        offset = 0
        for t in tensors:
            t.grad = torch.tensor(grads[s][offset:offset + t.numel()].copy())
            offset += t.numel()
        opt.step()
        after.append(floats(torch.cat([t.detach() for t in tensors]).numpy()))
    m = torch.cat([opt.state[t]["exp_avg"] for t in tensors]).numpy()
    v = torch.cat([opt.state[t]["exp_avg_sq"] for t in tensors]).numpy()
    return {
        "name": name,
        "lr": float(np.float32(lr)),
        "lr_per_step": None if lr_per_step is None else [float(np.float32(x)) for x in lr_per_step],
        "beta1": float(np.float32(betas[0])),
        "beta2": float(np.float32(betas[1])),
        "eps": float(np.float32(eps)),
        "weight_decay": float(np.float32(weight_decay)),
        "decay_end": n if decay_end is None else decay_end,
        "params0": floats(params0),
        "grads": [floats(g) for g in grads],
        "params_after": after,
        "m": floats(m),
        "v": floats(v),
    }


def adamw_fixture():
    rng = np.random.default_rng(20240604)
    # Hyper-parameters are float32-representable where the C++ options are floats, so both sides use equal values.
    f = lambda x: float(np.float32(x))  # noqa: E731
    return {"cases": [
        adamw_case("defaults_lr1e-2", rng, 9, 6, f(1e-2), (f(0.9), f(0.999)), f(1e-8), f(1e-2)),
        adamw_case("no_weight_decay", rng, 9, 6, f(3e-3), (f(0.9), f(0.999)), f(1e-8), 0.0),
        adamw_case("strong_decay_custom_betas", rng, 11, 8, f(5e-2), (f(0.8), f(0.95)), f(1e-6), f(0.1)),
        adamw_case("decay_first_range_only", rng, 10, 5, f(2e-2), (f(0.9), f(0.99)), f(1e-8), f(0.3), decay_end=4),
        adamw_case("scheduled_lr", rng, 7, 6, f(1e-2), (f(0.9), f(0.999)), f(1e-8), f(0.05),
                   lr_per_step=[f(x) for x in (0.0, 5e-3, 1e-2, 7.5e-3, 2.5e-3, 1e-3)]),
    ]}


def clip_case(name, rng, n, split, scale, max_norm):
    grads = (rng.standard_normal(n) * scale).astype(np.float32)
    tensors = [torch.zeros(split, requires_grad=True), torch.zeros(n - split, requires_grad=True)]
    tensors[0].grad = torch.tensor(grads[:split].copy())
    tensors[1].grad = torch.tensor(grads[split:].copy())
    norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    return {
        "name": name,
        "max_norm": float(np.float32(max_norm)),
        "grads": floats(grads),
        "norm": float(norm),
        "clipped": floats(torch.cat([t.grad for t in tensors]).numpy()),
    }


def clip_fixture():
    rng = np.random.default_rng(7)
    return {"cases": [
        clip_case("clips", rng, 12, 5, 2.0, 1.0),
        clip_case("below_max", rng, 12, 5, 0.05, 1.0),
        clip_case("large_max", rng, 30, 17, 3.0, 4.5),
    ]}


# --- head detectors: TransformerLens's definitions, in numpy -----------------------------------------------------


def previous_token_pattern(tokens):
    n = len(tokens)
    d = np.zeros((n, n))
    d[1:, :-1] = np.eye(n - 1)
    return np.tril(d)


def duplicate_token_pattern(tokens):
    t = np.asarray(tokens)
    eq = (t[None, :] == t[:, None]).astype(np.float64)
    np.fill_diagonal(eq, 0.0)
    return np.tril(eq)


def induction_pattern(tokens):
    dup = duplicate_token_pattern(tokens)
    shifted = np.roll(dup, 1, axis=1)
    shifted[:, 0] = 0.0
    return np.tril(shifted)


DETECTORS = {
    "previous_token": previous_token_pattern,
    "duplicate_token": duplicate_token_pattern,
    "induction": induction_pattern,
}
OPTIONS = {
    "plain": (False, False),
    "exclude_bos": (True, False),
    "exclude_current": (False, True),
    "exclude_both": (True, True),
}


def mul_score(pattern, detection, exclude_bos, exclude_current):
    p = pattern.astype(np.float64).copy()
    if exclude_bos:
        p[:, 0] = 0.0
    if exclude_current:
        np.fill_diagonal(p, 0.0)
    return float((p * detection).sum() / p.sum())


def scores(patterns, tokens):
    """patterns: (batch, head, q, k); tokens: (batch, pos) -> {option: {detector: [head scores, batch mean]}}."""
    out = {}
    for option, (bos, cur) in OPTIONS.items():
        out[option] = {}
        for name, make in DETECTORS.items():
            per_batch = [[mul_score(patterns[b, h], make(tokens[b]), bos, cur) for h in range(patterns.shape[1])]
                         for b in range(patterns.shape[0])]
            out[option][name] = [float(x) for x in np.mean(np.asarray(per_batch), axis=0)]
    return out


def head_detector_fixture():
    manifest = json.loads((FIXTURES / "stories260K" / "manifest.json").read_text())
    n_layers = manifest["model"]["config"]["n_layers"]
    result = {"stories260K": {}}
    for prompt in ("p0", "p1", "p2"):
        directory = FIXTURES / "stories260K" / prompt
        tokens = np.load(directory / "tokens.npy").astype(np.int64)
        layers = []
        for layer in range(n_layers):
            pattern = np.load(directory / f"blocks.{layer}.attn.hook_pattern.npy")
            layers.append(scores(pattern, tokens))
        result["stories260K"][prompt] = {"tokens": [int(x) for x in tokens[0]], "layers": layers}

    # A batched case: random causal softmax patterns over token rows with repeats.
    rng = np.random.default_rng(11)
    batch, heads, pos = 3, 2, 7
    tokens = rng.integers(0, 4, size=(batch, pos))
    logits = rng.standard_normal((batch, heads, pos, pos)) * 2.0
    logits[:, :, np.triu_indices(pos, 1)[0], np.triu_indices(pos, 1)[1]] = -np.inf
    pattern = np.exp(logits - logits.max(axis=-1, keepdims=True))
    pattern = (pattern / pattern.sum(axis=-1, keepdims=True)).astype(np.float32)
    result["random_batch"] = {
        "shape": [batch, heads, pos, pos],
        "tokens": [[int(x) for x in row] for row in tokens],
        "pattern": floats(pattern),
        "scores": scores(pattern, tokens),
    }
    return result


def write(name, data):
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    (OUT / name).write_text(text)
    print(f"wrote {OUT / name} ({len(text)} bytes)")


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    write("adamw.json", adamw_fixture())
    write("clip.json", clip_fixture())
    write("head_detectors.json", head_detector_fixture())


if __name__ == "__main__":
    main()
