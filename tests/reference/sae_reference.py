#!/usr/bin/python3
"""Reference numbers for the sparse autoencoders (tests/unit/test_sae.cpp), written from SAELens's definitions
(sae_lens/saes/{sae,standard_sae,topk_sae,jumprelu_sae,batchtopk_sae}.py) in plain PyTorch: SAELens itself is not
needed (nor installed here).

Writes one JSON file per case under tests/reference/fixtures/sae/: the case's options, weights (float32 values),
a batch x (n, d_in), the forward values (sae_in = x * scale - b_dec, hidden_pre, feature acts, hook_sae_recons,
the output), each training loss term, the autograd gradients of the total loss with respect to W_enc, b_enc, W_dec,
b_dec (and threshold for jumprelu, taken as the parameter itself: SAELens trains log_threshold, whose gradient is
threshold times this one), and, for the splice, d(x) of sum(output * probe) through the inference forward.
Everything is computed in float64 from float32 inputs.

Run from the repository root with Debian's interpreter (torch 1.13); re-running writes identical files:
    /usr/bin/python3 tests/reference/sae_reference.py
"""
import json
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "sae"
D_IN, D_SAE, N = 6, 12, 5


def rectangle(u):
    return ((u > -0.5) & (u < 0.5)).to(u)


class JumpReLUFn(torch.autograd.Function):
    """acts = pre * (pre > threshold); pre's gradient through kept latents, threshold's through the STE."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        d_pre = (pre > threshold).to(pre) * grad
        d_threshold = torch.sum(-(threshold / bw) * rectangle((pre - threshold) / bw) * grad, dim=0)
        return d_pre, d_threshold, None


class StepFn(torch.autograd.Function):
    """H(pre - threshold); only the threshold gets a gradient (the STE)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        return None, torch.sum(-(1.0 / bw) * rectangle((pre - threshold) / bw) * grad, dim=0), None


def topk_act(score, k):
    values, indices = torch.topk(score, k=k, dim=-1)
    return torch.zeros_like(score).scatter(-1, indices, values.relu())


def batchtopk_act(score, k):
    acts = score.relu()
    flat = acts.flatten()
    top = torch.topk(flat, int(k * acts.shape[0]), dim=-1)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


def forward(case, p, x):
    """The SAE's forward pass; returns the dict of intermediate values."""
    arch = case["architecture"]
    if case["normalize_activations"] == "constant_norm_rescale":
        scale = (D_IN ** 0.5) / x.norm(dim=-1, keepdim=True)
    else:
        scale = torch.ones(x.shape[0], 1, dtype=x.dtype)
    sae_in = x * scale - (p["b_dec"] if case["apply_b_dec_to_input"] else 0.0)
    pre = sae_in @ p["W_enc"] + p["b_enc"]
    norms = p["W_dec"].norm(dim=1)
    rescale = case.get("rescale_acts_by_decoder_norm", False)
    score = pre * norms if rescale else pre
    if arch == "standard":
        acts = pre.relu()
    elif arch == "topk":
        acts = topk_act(score, int(case["k"]))
    elif arch == "batchtopk":
        acts = batchtopk_act(score, case["k"])
    else:  # jumprelu: SAELens's training form (threshold > 0, so equal to relu(pre) * (pre > threshold))
        acts = JumpReLUFn.apply(pre, p["threshold"], case["bandwidth"])
    decoded = acts / norms if rescale else acts
    recons = decoded @ p["W_dec"] + p["b_dec"]
    output = recons / scale
    return dict(scale=scale, sae_in=sae_in, pre=pre, score=score, norms=norms, acts=acts, recons=recons,
                output=output)


def losses(case, p, x, f):
    """SAELens's training loss terms for the forward values f."""
    arch = case["architecture"]
    out = {"mse": (f["output"] - x).pow(2).sum(dim=-1).mean()}
    dead = torch.tensor(case.get("dead", [0] * D_SAE), dtype=torch.bool)
    if arch == "standard":
        out["l1"] = (case["l1_coefficient"] * (f["acts"] * f["norms"]).norm(p=1, dim=-1)).mean()
    elif arch == "jumprelu":
        if case["sparsity"] == "step":
            l0 = StepFn.apply(f["pre"], p["threshold"], case["bandwidth"]).sum(dim=-1)
        else:
            l0 = torch.tanh(case["tanh_scale"] * f["acts"] * f["norms"]).sum(dim=-1)
        out["l0"] = (case["l0_coefficient"] * l0).mean()
        if case.get("pre_act_loss_coefficient") and dead.any():
            per_row = ((p["threshold"] - f["pre"]).relu() * dead * f["norms"]).sum(dim=-1)
            out["pre_act"] = case["pre_act_loss_coefficient"] * per_row.mean()
    else:  # topk, batchtopk: the auxiliary loss on dead latents
        num_dead = int(dead.sum())
        if num_dead > 0:
            residual = (x - f["output"]).detach()
            k_aux = D_IN // 2
            scale = min(num_dead / k_aux, 1.0)
            k_aux = min(k_aux, num_dead)
            masked = torch.where(dead[None], f["score"], torch.tensor(-float("inf"), dtype=x.dtype))
            top = masked.topk(k_aux)
            aux_acts = torch.zeros_like(f["score"]).scatter(-1, top.indices, top.values)
            decoded = aux_acts / f["norms"] if case.get("rescale_acts_by_decoder_norm", False) else aux_acts
            aux_out = (decoded @ p["W_dec"] + p["b_dec"]) / f["scale"]
            out["aux"] = case["aux_loss_coefficient"] * scale * (aux_out - residual).pow(2).sum(dim=-1).mean()
    return out


def margins_ok(case, p, f):
    """True when no decision of the forward pass is within 1e-3 of flipping (so float32 makes the same ones)."""
    pre, score = f["pre"].detach(), f["score"].detach()
    arch = case["architecture"]
    if arch == "jumprelu":
        t = p["threshold"].detach()
        u = ((pre - t) / case["bandwidth"]).abs()
        if (pre - t).abs().min() < 1e-3 or (u - 0.5).abs().min() < 1e-3:
            return False
    if arch in ("topk", "batchtopk"):
        s = torch.sort(score.flatten() if arch == "batchtopk" else score, dim=-1, descending=True).values
        if (s[..., :-1] - s[..., 1:]).abs().min() < 1e-3:
            return False
    return pre.abs().min() > 1e-3


def case_file(name, case, seed):
    for attempt in range(1000):
        g = np.random.default_rng(seed + 7919 * attempt)
        p32 = {
            "W_enc": g.normal(0, 0.5, (D_IN, D_SAE)),
            "W_dec": g.normal(0, 0.5, (D_SAE, D_IN)),
            "b_enc": g.normal(0, 0.2, (D_SAE,)),
            "b_dec": g.normal(0, 0.2, (D_IN,)),
        }
        if case["architecture"] == "jumprelu":
            p32["threshold"] = g.uniform(0.05, 0.6, (D_SAE,))
        x32 = g.normal(0, 1.0, (N, D_IN))
        p32 = {k: v.astype(np.float32) for k, v in p32.items()}
        x32 = x32.astype(np.float32)
        p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p32.items()}
        x = torch.tensor(x32, dtype=torch.float64)
        f = forward(case, p, x)
        if margins_ok(case, p, f):
            break
    terms = losses(case, p, x, f)
    total = sum(terms.values())
    total.backward()
    # The splice: d(x) of sum(output * probe) through the same forward (inference, no error term).
    probe = g.normal(0, 1.0, (N, D_IN)).astype(np.float32)
    xg = torch.tensor(x32, dtype=torch.float64, requires_grad=True)
    q = {k: v.detach() for k, v in p.items()}
    (forward(case, q, xg)["output"] * torch.tensor(probe, dtype=torch.float64)).sum().backward()

    def num(t):
        return [float("%.12g" % v) for v in np.asarray(t.detach(), dtype=np.float64).flatten()]

    data = {
        "case": name,
        "d_in": D_IN, "d_sae": D_SAE, "n": N,
        "options": case,
        "weights": {k: [float(np.float32(v)) for v in a.flatten()] for k, a in p32.items()},
        "x": [float(v) for v in x32.flatten()],
        "forward": {k: num(f[k]) for k in ("sae_in", "pre", "acts", "recons", "output")},
        "loss": {k: float("%.12g" % float(v)) for k, v in terms.items()},
        "total": float("%.12g" % float(total)),
        "grad": {k: num(v.grad) for k, v in p.items()},
        "probe": [float(v) for v in probe.flatten()],
        "d_x": num(xg.grad),
    }
    (OUT / f"{name}.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")


CASES = {
    "standard": dict(architecture="standard", apply_b_dec_to_input=True, normalize_activations="none",
                     l1_coefficient=0.7),
    "standard_norm": dict(architecture="standard", apply_b_dec_to_input=False,
                          normalize_activations="constant_norm_rescale", l1_coefficient=0.3),
    "topk": dict(architecture="topk", apply_b_dec_to_input=True, normalize_activations="none", k=3,
                 rescale_acts_by_decoder_norm=False, aux_loss_coefficient=0.5,
                 dead=[1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0]),
    "topk_rescale": dict(architecture="topk", apply_b_dec_to_input=True, normalize_activations="none", k=4,
                         rescale_acts_by_decoder_norm=True, aux_loss_coefficient=1.0,
                         dead=[0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
    "jumprelu_step": dict(architecture="jumprelu", apply_b_dec_to_input=True, normalize_activations="none",
                          bandwidth=0.5, sparsity="step", l0_coefficient=0.3, tanh_scale=4.0,
                          pre_act_loss_coefficient=0.2, dead=[1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]),
    "jumprelu_tanh": dict(architecture="jumprelu", apply_b_dec_to_input=False, normalize_activations="none",
                          bandwidth=0.3, sparsity="tanh", l0_coefficient=0.2, tanh_scale=4.0),
    "batchtopk": dict(architecture="batchtopk", apply_b_dec_to_input=True, normalize_activations="none", k=2.4,
                      rescale_acts_by_decoder_norm=True, aux_loss_coefficient=0.7,
                      dead=[0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1]),
    # constant_norm_rescale with the terms on dead latents: the auxiliary decoding is divided by the row's scale
    # like the main one (SAELens's decode), and the pre-activation loss reads the scaled input's pre-activations.
    "topk_norm": dict(architecture="topk", apply_b_dec_to_input=True, normalize_activations="constant_norm_rescale",
                      k=3, rescale_acts_by_decoder_norm=True, aux_loss_coefficient=0.8,
                      dead=[0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]),
    "jumprelu_tanh_norm": dict(architecture="jumprelu", apply_b_dec_to_input=True,
                               normalize_activations="constant_norm_rescale", bandwidth=0.4, sparsity="tanh",
                               l0_coefficient=0.3, tanh_scale=2.5, pre_act_loss_coefficient=0.4,
                               dead=[0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0]),
}


def main():
    torch.set_grad_enabled(True)
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, case) in enumerate(CASES.items()):
        case_file(name, case, 1000 + i)


if __name__ == "__main__":
    main()
