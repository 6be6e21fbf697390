#!/usr/bin/python3
"""PyTorch autograd gradient fixtures for stories260K (float64), for the mechlens backward pass.

For three scalar metrics on the reference prompts, writes d metric / d activation at every
TransformerLens-named hook and d metric / d parameter for every tensor of the mechlens
`parameter_layout` naming, all computed in float64 and stored as float32. Run with Debian's python:

    /usr/bin/python3 tests/reference/llama_grad_reference.py --models ../shared/models --out tests/reference/fixtures

Re-running regenerates byte-identical files (single-threaded torch, no timestamps). A built-in
self-check compares random gradient entries against central finite differences in float64.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # importing the sibling script must not leave __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402  (the forward reference: checkpoint/tokenizer readers, conventions)

OUT_NAME = "stories260K_grad"
FD_EPS = 1e-6
FD_SAMPLES = 5
FD_SEED = 20240604
FD_MIN_FRACTION = 1e-2  # sample only entries with |grad| >= this fraction of the tensor's max |grad|
FD_TOLERANCE = 1e-5     # fatal; at eps 1e-6 float64 rounding alone gives ~1e-8..1e-6 relative

# (case id, prompt id of the forward fixtures, metric kind)
CASES = [("g0", "p0", "mean_ce"), ("g1", "p1", "logit_diff_top2_last"), ("g2", "p2", "logit_top1_pos3")]
G2_POSITION = 3

PER_LAYER_GRAD_HOOKS = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized",
                        "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                        "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                        "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out",
                        "hook_resid_post"]

CONVENTIONS = {
    "dtype": "float32 .npy (C order, little endian) computed in float64 and rounded once; tokens int32; "
             "negative zeros are written as +0",
    "batch_dim": "activation gradients and logits keep a leading batch dimension of 1; metric.npy has shape (1,)",
    "gradient": "grad.<hook>.npy = d metric / d (the tensor at that hook), with the forward pass written as in "
                "TransformerLens: each hook is an identity whose output is the only thing read downstream, so "
                "e.g. blocks.L.hook_resid_pre is the tensor both ln1 and the residual add read (hence "
                "grad.hook_embed == grad.blocks.0.hook_resid_pre and grad.blocks.L.hook_resid_post == "
                "grad.blocks.(L+1).hook_resid_pre)",
    "rmsnorm": "ln1.hook_scale = sqrt(mean(x^2) + 1e-5), shape (1,pos,1), the value x is divided by; "
               "ln1.hook_normalized = x / scale BEFORE the gain (the gain is applied after the hook), "
               "so grad.ln1.hook_normalized = gain * d metric / d (normalized * gain); likewise "
               "ln_final.hook_normalized with the final gain",
    "qkv": "hook_q (1,pos,n_heads,d_head), hook_k/hook_v (1,pos,n_kv_heads,d_head, not repeated: the gradient "
           "sums over the query heads of a group); q and k are hooked before rotary, so their gradients "
           "include the rotary's transpose",
    "attn_scores": "hook_attn_scores (1,n_heads,qpos,kpos) after scaling by 1/sqrt(d_head) and the causal mask; "
                   "the gradient of masked entries (kpos > qpos) is exactly 0",
    "pattern": "hook_pattern (1,n_heads,qpos,kpos): z = einsum over ALL kpos as in TransformerLens, so the "
               "gradient of masked entries (kpos > qpos) is v[kpos] . dz[qpos], generally NOT zero although "
               "the pattern there is 0; an implementation that only reads kpos <= qpos should compare the "
               "causal triangle",
    "mlp": "mlp.hook_pre = xn2 W_gate^T (llama2.c w1), mlp.hook_pre_linear = xn2 W_up^T (w3), "
           "mlp.hook_post = silu(pre) * pre_linear, hook_mlp_out = post W_down^T (w2)",
    "params": "param.<name>.npy uses the mechlens parameter_layout names and the (out, in) row-major layout "
              "of the .bin: token_embedding (vocab,d_model) is tied to the unembedding, so its gradient "
              "includes both the embedding lookup and the logits; attn_norm/mlp_norm/final_norm are the "
              "RMSNorm gains (d_model); w_gate = w1, w_up = w3, w_down = w2",
    "architecture": "as tests/reference/fixtures/stories260K (llama_reference.py): adjacent-pair rotary from "
                    "pos 0, theta 10000, GQA h -> kv head h // (n_heads/n_kv_heads), RMSNorm eps 1e-5, "
                    "SwiGLU MLP, tied unembedding",
}

METRICS = {
    "mean_ce": "mean over t = 0..pos-2 of -log_softmax(logits[0, t])[tokens[t+1]] (natural log)",
    "logit_diff_top2_last": "logits[0, pos-1, A] - logits[0, pos-1, B], A/B = top-1/top-2 token at the last "
                            "position (fixed, found by the same float64 forward)",
    "logit_top1_pos3": "logits[0, 3, id], id = top-1 token at position 3 (fixed, found by the same float64 "
                       "forward); positions > 3 cannot affect it, so their activation gradients are 0",
}


# --------------------------------------------------------------------------------------------------
# Parameters and forward pass


def parameter_names(n_layers):
    """Names in mechlens parameter_layout order for a normed, rotary, gated-SiLU, tied-unembedding model."""
    names = ["token_embedding"]
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        names += [p + n for n in ("attn_norm", "w_q", "w_k", "w_v", "w_o", "mlp_norm", "w_gate", "w_up", "w_down")]
    return names + ["final_norm"]


def make_parameters(cfg, weights):
    """float64 leaf tensors (requires_grad) keyed by parameter_layout name, copied from the float32 .bin arrays."""
    source = {"token_embedding": weights["token_embedding"], "final_norm": weights["rms_final"]}
    bin_name = {"attn_norm": "rms_att", "w_q": "wq", "w_k": "wk", "w_v": "wv", "w_o": "wo",
                "mlp_norm": "rms_ffn", "w_gate": "w1", "w_up": "w3", "w_down": "w2"}
    for layer in range(cfg["n_layers"]):
        for ours, theirs in bin_name.items():
            source[f"blocks.{layer}.{ours}"] = weights[theirs][layer]
    return {name: torch.tensor(np.asarray(source[name], dtype=np.float64), requires_grad=True)
            for name in parameter_names(cfg["n_layers"])}


def rotary(x, positions):
    """x: (batch, pos, heads, d_head); rotates adjacent pairs (2i, 2i+1) by pos * theta^(-2i/d_head)."""
    d_head = x.shape[-1]
    i = torch.arange(0, d_head, 2, dtype=torch.float64)
    angle = positions.to(torch.float64)[:, None] * (ref.ROPE_THETA ** (-i / d_head))[None, :]  # (pos, d_head/2)
    cos = torch.cos(angle)[None, :, None, :]
    sin = torch.sin(angle)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).reshape(x.shape)


def forward(cfg, P, tokens, hooks=None, patch=None):
    """float64 forward; returns logits (1, pos, vocab).

    `hooks` (dict) receives every hooked tensor, with retain_grad() when it is part of the graph.
    `patch` = (hook name, index tuple, delta) adds delta to one entry of that hook's tensor, which is then what
    everything downstream reads (the finite-difference check of activation gradients).
    """
    n_heads, n_kv, d_head = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_size"]
    group = n_heads // n_kv
    batch, n_pos = tokens.shape
    positions = torch.arange(n_pos)

    def hook(name, value):
        if patch is not None and patch[0] == name:
            bump = torch.zeros_like(value)
            bump[patch[1]] = patch[2]
            value = value + bump
        if hooks is not None:
            if value.requires_grad:
                value.retain_grad()
            hooks[name] = value
        return value

    def rmsnorm(prefix, x, gain):
        scale = hook(prefix + "hook_scale", torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + ref.RMS_EPS))
        return hook(prefix + "hook_normalized", x / scale) * gain

    x = hook("hook_embed", P["token_embedding"][tokens])  # (batch, pos, d_model)
    for layer in range(cfg["n_layers"]):
        p = f"blocks.{layer}."
        x = hook(p + "hook_resid_pre", x)  # (batch, pos, d_model)
        xn = rmsnorm(p + "ln1.", x, P[p + "attn_norm"])
        q = hook(p + "attn.hook_q", (xn @ P[p + "w_q"].T).reshape(batch, n_pos, n_heads, d_head))
        k = hook(p + "attn.hook_k", (xn @ P[p + "w_k"].T).reshape(batch, n_pos, n_kv, d_head))
        v = hook(p + "attn.hook_v", (xn @ P[p + "w_v"].T).reshape(batch, n_pos, n_kv, d_head))
        q = hook(p + "attn.hook_rot_q", rotary(q, positions))
        k = hook(p + "attn.hook_rot_k", rotary(k, positions))
        k_rep = k.repeat_interleave(group, dim=2)  # (batch, kpos, n_heads, d_head)
        v_rep = v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k_rep) / np.sqrt(d_head)  # (batch, head, qpos, kpos)
        scores = scores.masked_fill(positions[None, :] > positions[:, None], float("-inf"))
        scores = hook(p + "attn.hook_attn_scores", scores)
        pattern = hook(p + "attn.hook_pattern", torch.softmax(scores, dim=-1))
        z = hook(p + "attn.hook_z", torch.einsum("bhqk,bkhd->bqhd", pattern, v_rep))  # (batch, pos, head, d_head)
        attn_out = hook(p + "hook_attn_out", z.reshape(batch, n_pos, n_heads * d_head) @ P[p + "w_o"].T)
        x = hook(p + "hook_resid_mid", x + attn_out)
        xn2 = rmsnorm(p + "ln2.", x, P[p + "mlp_norm"])
        pre = hook(p + "mlp.hook_pre", xn2 @ P[p + "w_gate"].T)  # (batch, pos, d_mlp)
        pre_linear = hook(p + "mlp.hook_pre_linear", xn2 @ P[p + "w_up"].T)
        post = hook(p + "mlp.hook_post", torch.nn.functional.silu(pre) * pre_linear)
        mlp_out = hook(p + "hook_mlp_out", post @ P[p + "w_down"].T)
        x = hook(p + "hook_resid_post", x + mlp_out)
    xf = rmsnorm("ln_final.", x, P["final_norm"])
    return xf @ P["token_embedding"].T  # (batch, pos, vocab), tied unembedding


def metric_of(kind, logits, ids, targets):
    """The scalar metric (0-d float64 tensor) of one case; `targets` fixes the token ids it reads."""
    if kind == "mean_ce":
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        nxt = torch.tensor(ids[1:])
        return -logp[torch.arange(len(ids) - 1), nxt].mean()
    if kind == "logit_diff_top2_last":
        return logits[0, -1, targets["A"]] - logits[0, -1, targets["B"]]
    if kind == "logit_top1_pos3":
        return logits[0, G2_POSITION, targets["id"]]
    raise ValueError(kind)


def choose_targets(kind, logits):
    """Token ids a metric reads, picked from the unperturbed float64 logits, with their margins for the record."""
    if kind == "logit_diff_top2_last":
        top = torch.topk(logits[0, -1], 3)
        a, b, c = (int(t) for t in top.indices)
        return {"A": a, "B": b, "top3": c, "logit_A": float(top.values[0]), "logit_B": float(top.values[1]),
                "logit_top3": float(top.values[2])}
    if kind == "logit_top1_pos3":
        top = torch.topk(logits[0, G2_POSITION], 2)
        return {"id": int(top.indices[0]), "position": G2_POSITION, "top2": int(top.indices[1]),
                "logit_id": float(top.values[0]), "logit_top2": float(top.values[1])}
    return {}


def grad_hook_names(n_layers):
    names = ["hook_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{n}" for n in PER_LAYER_GRAD_HOOKS]
    return names + ["ln_final.hook_normalized"]


# --------------------------------------------------------------------------------------------------
# Finite-difference self-check


def pick_entries(rng, grads, count):
    """`count` random (name, index) pairs among entries whose |grad| is not negligible within their tensor."""
    names = sorted(grads)
    picks = []
    while len(picks) < count:
        name = names[int(rng.integers(len(names)))]
        g = np.abs(grads[name])
        big = np.argwhere(g >= FD_MIN_FRACTION * g.max()) if g.max() > 0 else np.empty((0, g.ndim))
        if len(big) == 0:
            continue
        picks.append((name, tuple(int(i) for i in big[int(rng.integers(len(big)))])))
    return picks


def relative_error(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def finite_difference_check(cfg, P, tokens, ids, kind, targets, param_grads, act_grads, rng):
    """Central differences (float64, eps FD_EPS) at random parameter and activation entries; returns the rows."""
    rows = []

    def evaluate(patch=None):
        with torch.no_grad():
            return float(metric_of(kind, forward(cfg, P, tokens, patch=patch), ids, targets))

    for name, idx in pick_entries(rng, param_grads, FD_SAMPLES):
        leaf = P[name]
        with torch.no_grad():
            orig = float(leaf[idx])
            leaf[idx] = orig + FD_EPS
            up = evaluate()
            leaf[idx] = orig - FD_EPS
            down = evaluate()
            leaf[idx] = orig
        rows.append(("param", name, idx, param_grads[name][idx], (up - down) / (2 * FD_EPS)))
    for name, idx in pick_entries(rng, act_grads, FD_SAMPLES):
        up = evaluate((name, idx, FD_EPS))
        down = evaluate((name, idx, -FD_EPS))
        rows.append(("activation", name, idx, act_grads[name][idx], (up - down) / (2 * FD_EPS)))
    return rows


# --------------------------------------------------------------------------------------------------
# Main


def save_f32(path, array):
    array = np.asarray(array, dtype=np.float32)
    ref.save_npy(path, np.where(array == 0, np.float32(0), array), "float32")  # no -0 in the files


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=ref.default_models_dir(),
                        help="shared models directory (default: $MECHLENS_MODELS or <repo>/../shared/models)")
    parser.add_argument("--out", default=os.path.join(here, "fixtures"), help="fixture root directory")
    args = parser.parse_args()

    torch.set_num_threads(1)  # reproducible reductions, hence byte-identical fixtures
    model_path = os.path.join(args.models, ref.MODEL_NAME, "stories260K.bin")
    tok_path = os.path.join(args.models, ref.MODEL_NAME, "tok512.bin")
    digest = ref.sha256_file(model_path)
    if digest != ref.MODEL_SHA256:
        sys.exit(f"{model_path}: sha256 {digest} != expected {ref.MODEL_SHA256}")

    cfg, weights = ref.read_checkpoint(model_path)
    tok = ref.Tokenizer(tok_path, cfg["vocab_size"])
    prompts = dict(ref.PROMPTS)
    # the token ids must be those of the forward fixtures' manifest, when it is there
    fwd_manifest_path = os.path.join(args.out, ref.MODEL_NAME, "manifest.json")
    fwd_tokens = {}
    if os.path.exists(fwd_manifest_path):
        with open(fwd_manifest_path, encoding="utf-8") as f:
            fwd_tokens = {p["id"]: p["tokens"] for p in json.load(f)["prompts"]}

    P = make_parameters(cfg, weights)
    pnames = parameter_names(cfg["n_layers"])
    gnames = grad_hook_names(cfg["n_layers"])
    forward_model = ref.Llama(cfg, weights, torch.float64)
    out_root = os.path.join(args.out, OUT_NAME)
    rng = np.random.default_rng(FD_SEED)
    manifest_cases, all_rows, grad_shapes = [], [], None

    for case, pid, kind in CASES:
        ids = tok.encode(prompts[pid], bos=True)
        if pid in fwd_tokens and fwd_tokens[pid] != ids:
            sys.exit(f"{fwd_manifest_path}: tokens of {pid} differ from the tokenizer's {ids}")
        tokens = torch.tensor([ids], dtype=torch.int64)

        for leaf in P.values():
            leaf.grad = None
        hooks = {}
        logits = forward(cfg, P, tokens, hooks=hooks)
        targets = choose_targets(kind, logits.detach())
        metric = metric_of(kind, logits, ids, targets)
        metric.backward()

        # same maths as the forward fixtures' independent code path
        ref_hooks = {}
        with torch.no_grad():
            ref_logits = forward_model.forward(tokens, hooks=ref_hooks)
        drift = max([float((ref_logits - logits.detach()).abs().max())] +
                    [float((ref_hooks[n] - hooks[n].detach()).nan_to_num(0.0, 0.0, 0.0).abs().max())
                     for n in ref_hooks])
        if drift > 1e-12:
            sys.exit(f"{case}: forward differs from llama_reference.py by {drift:.3e}")

        act_grads = {}
        for name in gnames:
            g = hooks[name].grad
            if g is None:
                sys.exit(f"{case}: no gradient reached {name}")
            act_grads[name] = g.numpy().copy()
        param_grads = {name: P[name].grad.numpy().copy() for name in pnames}
        rows = finite_difference_check(cfg, P, tokens, ids, kind, targets, param_grads, act_grads, rng)
        all_rows += [(case,) + r for r in rows]

        d = os.path.join(out_root, case)
        os.makedirs(d, exist_ok=True)
        ref.save_npy(os.path.join(d, "tokens.npy"), np.array([ids]), "int32")
        save_f32(os.path.join(d, "metric.npy"), np.array([float(metric)]))
        save_f32(os.path.join(d, "logits.npy"), logits.detach().numpy())
        for name in gnames:
            save_f32(os.path.join(d, f"grad.{name}.npy"), act_grads[name])
        for name in pnames:
            save_f32(os.path.join(d, f"param.{name}.npy"), param_grads[name])
        if grad_shapes is None:
            grad_shapes = {n: ["pos" if s == len(ids) else s for s in act_grads[n].shape] for n in gnames}
        print(f"{case} ({pid}, {len(ids)} tokens): {kind} = {float(metric):.17g} {targets if targets else ''}")
        manifest_cases.append({"id": case, "prompt_id": pid, "text": prompts[pid], "tokens": ids,
                               "n_tokens": len(ids), "metric": kind, "metric_definition": METRICS[kind],
                               "metric_value": float(metric), "targets": targets})

    print("finite-difference self-check (central, float64, eps = %g):" % FD_EPS)
    worst = 0.0
    for case, what, name, idx, autograd, fd in all_rows:
        err = relative_error(autograd, fd)
        worst = max(worst, err)
        print(f"  {case} {what:10s} {name}{list(idx)}: autograd {autograd:+.12e} fd {fd:+.12e} "
              f"abs err {abs(autograd - fd):.1e} rel err {err:.2e}")
    print(f"worst relative error {worst:.2e} over {len(all_rows)} entries")
    if worst > FD_TOLERANCE:
        sys.exit(f"finite-difference check failed: {worst:.2e} > {FD_TOLERANCE:g}")

    manifest = {
        "model": {"name": ref.MODEL_NAME, "file": f"{ref.MODEL_NAME}/stories260K.bin", "sha256": ref.MODEL_SHA256,
                  "tokenizer": f"{ref.MODEL_NAME}/tok512.bin", "config": cfg,
                  "rms_eps": ref.RMS_EPS, "rope_theta": ref.ROPE_THETA},
        "generator": {"script": "tests/reference/llama_grad_reference.py", "torch": torch.__version__,
                      "numpy": np.__version__, "compute_dtype": "float64", "stored_dtype": "float32",
                      "finite_difference": {"eps": FD_EPS, "samples_per_case": [FD_SAMPLES, FD_SAMPLES],
                                            "tolerance": FD_TOLERANCE}},
        "conventions": CONVENTIONS,
        "files_per_case": (["tokens.npy", "metric.npy", "logits.npy"] + [f"grad.{n}.npy" for n in gnames] +
                           [f"param.{n}.npy" for n in pnames]),
        "grad_hook_names": gnames,
        "grad_hook_shapes": grad_shapes,
        "parameter_names": pnames,
        "parameter_shapes": {n: list(P[n].shape) for n in pnames},
        "cases": manifest_cases,
    }
    with open(os.path.join(out_root, "manifest.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, files in os.walk(out_root) for n in files)
    print(f"wrote {out_root}: {total} bytes")


if __name__ == "__main__":
    main()
