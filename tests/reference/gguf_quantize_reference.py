#!/usr/bin/env python3
"""Writes tests/reference/fixtures/ggml_quants/tiny_llama_f32.gguf, a small random LLaMA (d_model 32, d_mlp 64, one
block, 32-token vocabulary) whose every matrix row is whole Q8_0 blocks, and tiny_llama_q8_0.gguf, what llama.cpp's
own `llama-quantize IN OUT Q8_0` makes of it. The C++ test checks that `quantize_gguf` writes the same tensors, type
and bytes, and the same file type keys.

Usage (Debian's python3 with numpy; gguf-py imports sentencepiece, stubbed here when missing):
  /usr/bin/python3 tests/reference/gguf_quantize_reference.py --llama-cpp /tmp/llama.cpp \
      --llama-quantize /tmp/llama.cpp/build/bin/llama-quantize [--out DIR]
"""
import argparse
import os
import subprocess

import numpy as np

from ggml_quants_reference import import_gguf_py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, help="a llama.cpp checkout (for gguf-py, its GGUF writer)")
    ap.add_argument("--llama-quantize", required=True, help="llama-quantize built from that checkout")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures", "ggml_quants"))
    args = ap.parse_args()
    gguf = import_gguf_py(args.llama_cpp)

    d, ff, n_heads, n_kv, vocab = 32, 64, 4, 2, 32
    source = os.path.join(args.out, "tiny_llama_f32.gguf")
    quantised = os.path.join(args.out, "tiny_llama_q8_0.gguf")
    os.makedirs(args.out, exist_ok=True)
    w = gguf.GGUFWriter(source, "llama")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(d // n_heads)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [chr(ord("a") + i) for i in range(vocab - 3)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(20261204)

    def matrix(name, rows, cols, scale):
        # Rows of very different sizes, so the per-block scales span several binades.
        row_scale = (scale * 10.0 ** rng.uniform(-2, 1, size=(rows, 1))).astype(np.float32)
        w.add_tensor(name, (rng.standard_normal((rows, cols)).astype(np.float32) * row_scale).astype(np.float32))

    matrix("token_embd.weight", vocab, d, 1.0)
    w.add_tensor("blk.0.attn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    matrix("blk.0.attn_q.weight", d, d, d ** -0.5)
    matrix("blk.0.attn_k.weight", d // n_heads * n_kv, d, d ** -0.5)
    matrix("blk.0.attn_v.weight", d // n_heads * n_kv, d, d ** -0.5)
    matrix("blk.0.attn_output.weight", d, d, d ** -0.5)
    w.add_tensor("blk.0.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    matrix("blk.0.ffn_gate.weight", ff, d, d ** -0.5)
    matrix("blk.0.ffn_up.weight", ff, d, d ** -0.5)
    matrix("blk.0.ffn_down.weight", d, ff, ff ** -0.5)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    matrix("output.weight", vocab, d, d ** -0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    subprocess.run([args.llama_quantize, source, quantised, "Q8_0"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    for path in (source, quantised):
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
