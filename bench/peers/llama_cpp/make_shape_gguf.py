#!/usr/bin/env python3
"""Writes a random-weight LLaMA of a known shape as an F32 GGUF that both llama.cpp and mechlens open, for timing
the two tools on the same file (bench_vs_llama_cpp.sh). Shapes: stories15M (d_model 288, 6 layers, 6 heads, d_mlp
768) and llama110M (768, 12, 12, 2048), both with a 32000-token vocabulary and an untied output matrix. Weights are
N(0, 1/fan_in); norms are ones. Uses gguf-py from a llama.cpp checkout (outside this repository).

    /usr/bin/python3 bench/peers/llama_cpp/make_shape_gguf.py --gguf-py LLAMA_CPP/gguf-py --shape llama110M --out F
"""
import argparse
import sys
import types

import numpy as np

SHAPES = {"stories15M": (288, 6, 6, 768), "llama110M": (768, 12, 12, 2048)}
VOCAB = 32000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-py", required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.modules.setdefault("sentencepiece", types.SimpleNamespace(SentencePieceProcessor=object))
    sys.path.insert(0, args.gguf_py)
    import gguf

    d, layers, heads, d_mlp = SHAPES[args.shape]
    w = gguf.GGUFWriter(args.out, "llama")
    w.add_context_length(1024)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(d_mlp)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(d // heads)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(VOCAB - 3)])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3] + [1] * (VOCAB - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(1)

    def matrix(name, rows, cols):
        w.add_tensor(name, rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(cols ** -0.5))

    matrix("token_embd.weight", VOCAB, d)
    for layer in range(layers):
        p = f"blk.{layer}."
        w.add_tensor(p + "attn_norm.weight", np.ones(d, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            matrix(p + name + ".weight", d, d)
        w.add_tensor(p + "ffn_norm.weight", np.ones(d, np.float32))
        matrix(p + "ffn_gate.weight", d_mlp, d)
        matrix(p + "ffn_up.weight", d_mlp, d)
        matrix(p + "ffn_down.weight", d, d_mlp)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    matrix("output.weight", VOCAB, d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
