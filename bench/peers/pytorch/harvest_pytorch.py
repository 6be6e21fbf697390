#!/usr/bin/env python3
"""PyTorch peer of bench/bench_harvest.cpp (issue 13): harvesting a block's residual stream for SAE training against
the plain forward pass over the same contexts, one thread, with the reference LLaMA of llama_reference.py. Each run
packs random documents of 200 tokens (ids 3 and up) into contexts of 128 tokens, each starting with BOS (1) and with
BOS before every document (mechlens's context_packer), and runs 4 batches of 8 contexts (4096 tokens):

  forward         the plain forward pass, logits of the last position only;
  harvest_last    the last block's output (hook_resid_post) at every position, captured by a forward hook on the
                  block module, copied to numpy and written in shards of 2048 rows (one F32 tensor `activations`
                  (rows, d_model) per safetensors file, written by hand, plus a manifest.json) in a temp directory;
                  nothing runs after the block (no final norm or unembedding), as in mechlens's harvest;
  harvest_middle  the same for block n_layers / 2 (bench_harvest.cpp's "middle"); the blocks after it are skipped;
  harvest_last_z  the last block's hook_resid_post and attn.hook_z (heads flattened head-major) together.

Prints CSV: tool,model,test,threads,tokens_per_second (the mean of --repeat timed runs after one warm-up; the temp
directory is emptied between runs, outside the timing).

    /usr/bin/python3 bench/peers/pytorch/harvest_pytorch.py [MODEL.gguf ...] [--repeat 3] [--threads 1]

Default models: the shared stories260K.gguf and $BENCH_WORK/stories15M_f32.gguf (BENCH_WORK defaults to
/tmp/mechlens_vs_llama_cpp; a random-weight file of the stories15M shape, as bench_harvest.cpp's), when present.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp: see llama_reference.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import Llama, StopForward, keep_freed_memory, set_threads  # noqa: E402

CONTEXT, BATCH, BATCHES, SHARD_ROWS, DOCUMENT, BOS = 128, 8, 4, 2048, 200, 1


class RandomDocuments:
    """Endless documents of DOCUMENT pseudo-random token ids in [3, vocab)."""

    def __init__(self, vocab, seed=11):
        self.vocab, self.rng = vocab, np.random.default_rng(seed)

    def next(self):
        return self.rng.integers(3, self.vocab, DOCUMENT, dtype=np.int64)


class Packer:
    """Contexts of `length` tokens: BOS first, BOS before each document starting inside a context."""

    def __init__(self, docs, length):
        self.docs, self.length, self.doc, self.offset = docs, length, None, 0

    def next(self, out):
        filled = 0
        while filled < self.length:
            if self.doc is None or self.offset >= len(self.doc):
                self.doc, self.offset = self.docs.next(), 0
            if self.doc[self.offset] != BOS and (filled == 0 or self.offset == 0):
                out[filled] = BOS
                filled += 1
            take = min(self.length - filled, len(self.doc) - self.offset)
            out[filled:filled + take] = self.doc[self.offset:self.offset + take]
            filled += take
            self.offset += take


def write_safetensors(path, name, array, metadata):
    """One F32 tensor: 8-byte little-endian header length, JSON header (padded with spaces to 8 bytes), raw data."""
    header = {"__metadata__": metadata,
              name: {"dtype": "F32", "shape": list(array.shape), "data_offsets": [0, array.nbytes]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(np.ascontiguousarray(array, dtype="<f4").data)


def contexts(vocab, packer=None):
    """BATCHES batches of (BATCH, CONTEXT) token ids."""
    packer = packer or Packer(RandomDocuments(vocab), CONTEXT)
    tokens = np.empty((BATCHES, BATCH, CONTEXT), np.int64)
    for b in range(BATCHES):
        for i in range(BATCH):
            packer.next(tokens[b, i])
    return torch.from_numpy(tokens)


def run_forward(model, tokens):
    for b in range(BATCHES):
        model(tokens[b], last_only=True)


def run_harvest(model, layer, with_z, directory):
    """Packs the documents, runs the blocks up to `layer` batch by batch, writes the captured rows in shards."""
    cfg = model.cfg
    tokens = contexts(cfg.vocab)
    sites = [(f"blocks.{layer}.hook_resid_post", cfg.d_model)]
    if with_z:
        sites.append((f"blocks.{layer}.attn.hook_z", cfg.n_heads * cfg.d_head))
    for name, _ in sites:
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    shards = [np.empty((SHARD_ROWS, width), np.float32) for _, width in sites]
    buffered, written, captured = 0, [], {}

    def manifest(complete):
        with open(os.path.join(directory, "manifest.json"), "w") as f:
            json.dump({"context": CONTEXT, "shard_rows": SHARD_ROWS, "batch_contexts": BATCH, "bos": BOS,
                       "sites": [name for name, _ in sites], "shards": written, "complete": complete}, f)

    def keep_z(module, inputs, output):
        captured["z"] = output.reshape(-1, output.shape[-1]).numpy()

    def keep_resid_and_stop(module, inputs, output):
        captured["resid"] = output.reshape(-1, output.shape[-1]).numpy()
        raise StopForward  # nothing after this block is needed

    handles = [model.blocks[layer].register_forward_hook(keep_resid_and_stop)]
    if with_z:
        handles.append(model.blocks[layer].attn.hook_z.register_forward_hook(keep_z))
    try:
        manifest(False)
        for b in range(BATCHES):
            try:
                model(tokens[b])
            except StopForward:
                pass
            rows = [captured["resid"]] + ([captured["z"]] if with_z else [])
            at = 0
            while at < rows[0].shape[0]:  # copy into the shard buffers, flushing each full shard
                take = min(SHARD_ROWS - buffered, rows[0].shape[0] - at)
                for shard, r in zip(shards, rows):
                    shard[buffered:buffered + take] = r[at:at + take]
                buffered, at = buffered + take, at + take
                if buffered == SHARD_ROWS:
                    for (name, _), shard in zip(sites, shards):
                        write_safetensors(os.path.join(directory, name, f"shard_{len(written):05d}.safetensors"),
                                          "activations", shard, {"hook_name": name, "shard": str(len(written))})
                    written.append({"rows": buffered})
                    buffered = 0
                    manifest(False)
        assert buffered == 0, "4096 tokens make whole shards of 2048 rows"
        manifest(True)
    finally:
        for h in handles:
            h.remove()


def timed(run, repeat, directory):
    """Mean tokens/s of `repeat` runs after one warm-up; the directory is emptied before each run, untimed."""
    rates = []
    for i in range(repeat + 1):
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        t0 = time.perf_counter()
        run()
        if i:
            rates.append(BATCHES * BATCH * CONTEXT / (time.perf_counter() - t0))
    return sum(rates) / len(rates)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    work = os.environ.get("BENCH_WORK", "/tmp/mechlens_vs_llama_cpp")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=[
        os.path.join(here, "../../../../shared/models/stories260K/stories260K.gguf"),
        os.path.join(work, "stories15M_f32.gguf")])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    keep_freed_memory()
    print("tool,model,test,threads,tokens_per_second")
    directory = tempfile.mkdtemp(prefix="pytorch_harvest_")
    try:
        for path in args.models:
            if not os.path.exists(path):
                print(f"skipping {path}: not found", file=sys.stderr)
                continue
            model = Llama(path)
            name = os.path.basename(path)
            last, middle = model.cfg.n_layers - 1, model.cfg.n_layers // 2
            tokens = contexts(model.cfg.vocab)
            with torch.inference_mode():
                for test, run in (("forward", lambda: run_forward(model, tokens)),
                                  ("harvest_last", lambda: run_harvest(model, last, False, directory)),
                                  ("harvest_middle", lambda: run_harvest(model, middle, False, directory)),
                                  ("harvest_last_z", lambda: run_harvest(model, last, True, directory))):
                    rate = timed(run, args.repeat, directory)
                    print(f"pytorch,{name},{test},{args.threads},{rate:.1f}", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
