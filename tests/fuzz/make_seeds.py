#!/usr/bin/env python3
"""Builds the seed corpora of the libFuzzer harnesses in BUILD_DIR/fuzz/seeds/<harness>/ (python3 stdlib only).

Two kinds of seeds:
  * cut from the real model files under $MECHLENS_MODELS (default <repo>/../shared/models) when they exist:
    headers and short prefixes, never more than 64 KiB each, and only into the build tree (nothing is copied
    into the repository);
  * tiny synthetic files written here from the format descriptions, always, so fuzzing works without the models.
Small repository fixtures (tests/reference/fixtures) are used as well when they fit the size limit.

Usage: make_seeds.py BUILD_DIR
"""
import io
import json
import os
import pathlib
import shutil
import struct
import sys
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]
MAX_SEED = 64 * 1024


def models_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MECHLENS_MODELS", str(REPO.parent / "shared" / "models")))


def tokenizers_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MECHLENS_TOKENIZERS", str(REPO.parent / "shared" / "tokenizers")))


class Corpus:
    def __init__(self, root: pathlib.Path, name: str):
        self.dir = root / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.count = 0

    def add(self, label: str, data: bytes) -> None:
        data = data[:MAX_SEED]
        (self.dir / f"{self.count:03d}_{label}").write_bytes(data)
        self.count += 1

    def add_prefixes(self, label: str, path: pathlib.Path, header: int) -> None:
        """The first `header` bytes and a few longer prefixes of a real file, if it exists."""
        if not path.is_file():
            return
        with open(path, "rb") as f:
            head = f.read(MAX_SEED)
        for n in sorted({header, 256, 4096, MAX_SEED}):
            if n <= len(head):
                self.add(f"{label}_prefix{n}", head[:n])


def f32s(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def ramp(n: int, k: int = 0) -> list:
    return [((i * 7 + k * 3) % 17 - 8) * 0.125 for i in range(n)]


# ---- llama2.c legacy checkpoints -------------------------------------------------------------------------------

def llama2c_model(dim=4, hidden=4, layers=1, heads=2, kv_heads=1, vocab=4, seq=2, shared=True) -> bytes:
    head = dim // heads
    kv = kv_heads * head
    out = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq)
    sizes = [vocab * dim, layers * dim, layers * dim * dim, layers * kv * dim, layers * kv * dim, layers * dim * dim,
             layers * dim, layers * hidden * dim, layers * dim * hidden, layers * hidden * dim, dim,
             seq * head // 2, seq * head // 2]
    if not shared:
        sizes.append(vocab * dim)
    for k, n in enumerate(sizes):
        out += f32s(ramp(n, k))
    return out


# ---- GGUF --------------------------------------------------------------------------------------------------------

def gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key: str, type_: int, payload: bytes) -> bytes:
    return gguf_str(key) + struct.pack("<I", type_) + payload


def gguf_assemble(kvs: list, entries: list) -> bytes:
    """A GGUF v3 file: the metadata `kvs`, then tensors (name, dims, ggml type, data) aligned to 32 bytes."""
    infos, blob = b"", b""
    for name, dims, ttype, data in entries:
        infos += gguf_str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += struct.pack("<IQ", ttype, len(blob))
        blob += data + b"\0" * ((-len(data)) % 32)
    out = b"GGUF" + struct.pack("<IQQ", 3, len(entries), len(kvs)) + b"".join(kvs) + infos
    out += b"\0" * ((-len(out)) % 32)
    return out + blob


def gguf_llama_kvs(d: int, hidden: int) -> list:
    """The metadata of a one-block llama with 2 heads, 1 kv head and a context of 8 (architecture key first)."""
    return [gguf_kv("general.architecture", 8, gguf_str("llama")),
            gguf_kv("llama.embedding_length", 4, struct.pack("<I", d)),
            gguf_kv("llama.block_count", 4, struct.pack("<I", 1)),
            gguf_kv("llama.feed_forward_length", 4, struct.pack("<I", hidden)),
            gguf_kv("llama.attention.head_count", 4, struct.pack("<I", 2)),
            gguf_kv("llama.attention.head_count_kv", 4, struct.pack("<I", 1)),
            gguf_kv("llama.context_length", 4, struct.pack("<I", 8)),
            gguf_kv("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
            gguf_kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5))]


def gguf_model(ttype: int = 0, with_vocab: bool = True) -> bytes:
    """A tiny llama GGUF: d_model 4, 2 heads, 1 kv head, d_mlp 4, 1 layer, vocab 4; ttype 0 = F32, 1 = F16."""
    d, hidden, vocab = 4, 4, 4
    kvs = [gguf_kv("general.alignment", 4, struct.pack("<I", 32))] + gguf_llama_kvs(d, hidden)
    if with_vocab:
        tokens = ["<unk>", "<s>", "</s>", "\u2581a"]
        kvs.append(gguf_kv("tokenizer.ggml.tokens", 9,
                           struct.pack("<IQ", 8, len(tokens)) + b"".join(gguf_str(t) for t in tokens)))
        kvs.append(gguf_kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 4) + f32s([0, 0, 0, -1])))
        kvs.append(gguf_kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ4i", 5, 4, 2, 3, 3, 1)))
        kvs.append(gguf_kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)))
        kvs.append(gguf_kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2)))
    tensors = [("token_embd.weight", [d, vocab]), ("blk.0.attn_norm.weight", [d]), ("blk.0.attn_q.weight", [d, d]),
               ("blk.0.attn_k.weight", [d, 2]), ("blk.0.attn_v.weight", [d, 2]), ("blk.0.attn_output.weight", [d, d]),
               ("blk.0.ffn_norm.weight", [d]), ("blk.0.ffn_gate.weight", [d, hidden]),
               ("blk.0.ffn_up.weight", [d, hidden]), ("blk.0.ffn_down.weight", [hidden, d]),
               ("output_norm.weight", [d])]
    entries = []
    for k, (name, dims) in enumerate(tensors):
        n = 1
        for x in dims:
            n *= x
        values = ramp(n, k)
        data = f32s(values) if ttype == 0 else struct.pack(f"<{n}e", *values)
        entries.append((name, dims, ttype, data))
    return gguf_assemble(kvs, entries)


def gguf_quantised_model() -> bytes:
    """A tiny llama GGUF (d_model 32, 2 heads, 1 kv head, d_mlp 32, 1 layer, vocab 32) whose matrices are stored
    as Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and BF16 blocks of pseudo-random bytes with finite half scales."""
    d = 32
    kvs = gguf_llama_kvs(d, d)
    tensors = [("token_embd.weight", [d, d]), ("blk.0.attn_norm.weight", [d]), ("blk.0.attn_q.weight", [d, d]),
               ("blk.0.attn_k.weight", [d, 16]), ("blk.0.attn_v.weight", [d, 16]),
               ("blk.0.attn_output.weight", [d, d]), ("blk.0.ffn_norm.weight", [d]),
               ("blk.0.ffn_gate.weight", [d, d]), ("blk.0.ffn_up.weight", [d, d]),
               ("blk.0.ffn_down.weight", [d, d]), ("output_norm.weight", [d])]
    # (ggml type, bytes per block of 32 elements, byte offsets of half scales)
    kinds = [(8, 34, [0]), (2, 18, [0]), (3, 20, [0, 2]), (6, 22, [0]), (7, 24, [0, 2]), (30, 64, [])]
    state = 12345
    entries = []
    for k, (name, dims) in enumerate(tensors):
        n = 1
        for x in dims:
            n *= x
        if len(dims) == 1:
            ttype, data = 0, f32s(ramp(n, k))
        else:
            ttype, per_block, halves = kinds[k % len(kinds)]
            raw = bytearray()
            for _ in range(n // 32 * per_block):
                state = (state * 1103515245 + 12345) % 2**31
                raw.append(state >> 16 & 0xFF)
            for b in range(n // 32):
                for h in halves:
                    raw[b * per_block + h:b * per_block + h + 2] = struct.pack("<e", 0.01 * (1 + b % 7))
            if ttype == 30:  # BF16: keep every exponent moderate
                for i in range(1, len(raw), 2):
                    raw[i] = (raw[i] & 0x80) | 0x3E
            data = bytes(raw)
        entries.append((name, dims, ttype, data))
    return gguf_assemble(kvs, entries)


def gguf_control_vector(blocks=(1, 2), width=4) -> bytes:
    """A llama.cpp control vector: direction.N F32 1-D tensors and the controlvector keys."""
    kvs = [gguf_kv("general.architecture", 8, gguf_str("controlvector")),
           gguf_kv("controlvector.model_hint", 8, gguf_str("llama")),
           gguf_kv("controlvector.layer_count", 5, struct.pack("<i", len(blocks)))]
    return gguf_assemble(kvs, [(f"direction.{block}", [width], 0, f32s(ramp(width, k)))
                               for k, block in enumerate(blocks)])


# ---- safetensors -------------------------------------------------------------------------------------------------

def safetensors(tensors, metadata=None) -> bytes:
    """tensors: list of (name, shape, floats)."""
    header, blob = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, shape, values in tensors:
        data = f32s(values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def checkpoint(with_optimizer: bool) -> bytes:
    """A mechlens training checkpoint: d_model 4, 2 heads, 1 kv head, d_mlp 4, 1 layer, vocab 4, tied, rotary."""
    config = {"d_model": "4", "n_layers": "1", "n_heads": "2", "n_kv_heads": "1", "d_mlp": "4", "d_vocab": "4",
              "n_ctx": "4", "rope_theta": "10000", "norm_eps": "1e-05", "tied_unembed": "true",
              "rope": "adjacent_pairs", "norm": "rms", "positions": "rotary", "mlp": "gated_silu"}
    metadata = {"mechlens.config." + k: v for k, v in config.items()}
    metadata["mechlens.format"] = "checkpoint"
    metadata["run"] = "seed"
    layout = [("token_embedding", [4, 4]), ("blocks.0.attn_norm", [4]), ("blocks.0.w_q", [4, 4]),
              ("blocks.0.w_k", [2, 4]), ("blocks.0.w_v", [2, 4]), ("blocks.0.w_o", [4, 4]),
              ("blocks.0.mlp_norm", [4]), ("blocks.0.w_gate", [4, 4]), ("blocks.0.w_up", [4, 4]),
              ("blocks.0.w_down", [4, 4]), ("final_norm", [4])]
    tensors, total = [], 0
    for k, (name, shape) in enumerate(layout):
        n = shape[0] * (shape[1] if len(shape) == 2 else 1)
        total += n
        tensors.append((name, shape, ramp(n, k)))
    if with_optimizer:
        metadata["mechlens.optimizer.step"] = "3"
        tensors.append(("optimizer.adamw.m", [total], ramp(total, 1)))
        tensors.append(("optimizer.adamw.v", [total], [abs(x) for x in ramp(total, 2)]))
    return safetensors(tensors, metadata)


# ---- .npy --------------------------------------------------------------------------------------------------------

def npy(descr: str, shape, raw: bytes, major: int = 1) -> bytes:
    dims = ", ".join(str(x) for x in shape) + ("," if len(shape) == 1 else "")
    d = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    pre = 10 if major == 1 else 12
    length = len(d) + 1
    length += (-(pre + length)) % 64
    head = b"\x93NUMPY" + bytes([major, 0])
    head += struct.pack("<H" if major == 1 else "<I", length)
    return head + d.encode() + b" " * (length - len(d) - 1) + b"\n" + raw


# ---- llama2.c tokenizer ------------------------------------------------------------------------------------------

def tokenizer(pieces) -> bytes:
    longest = max(len(p) for p in pieces)
    out = struct.pack("<i", longest)
    for k, p in enumerate(pieces):
        out += struct.pack("<fi", -float(k), len(p)) + p
    return out


# ---- torch.save archives ---------------------------------------------------------------------------------------

def torch_pt(tensors, storages) -> bytes:
    """A stored ZIP holding archive/data.pkl (a protocol-2 OrderedDict of _rebuild_tensor_v2 calls) and the storages;
    tensors: (name, storage type, key, numel, offset, size, stride)."""
    def text(s):
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def ints(xs):
        return b"(" + b"".join(b"K" + bytes([x]) for x in xs) + b"t"

    pkl = b"\x80\x02ccollections\nOrderedDict\n)R("
    for name, stype, key, numel, offset, size, stride in tensors:
        pkl += text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n((" + text("storage") + b"ctorch\n" + stype.encode()
        pkl += b"\n" + text(key) + text("cpu") + b"K" + bytes([numel]) + b"tQK" + bytes([offset]) + ints(size)
        pkl += ints(stride) + b"\x89}tR"
    pkl += b"u."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in [("archive/data.pkl", pkl)] + [("archive/data/" + k, v) for k, v in storages]:
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


# ---- JSON and GPT-2 vocabularies -----------------------------------------------------------------------------------

def gpt2_byte_symbols() -> list:
    """GPT-2's spelling of each byte: printable Latin-1 stands for itself, the other 68 bytes for U+0100 onwards."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def gpt2_tiny_files():
    """A tiny valid vocab.json, merges.txt and tokenizer.json (the 256 bytes, three merges, <|endoftext|>)."""
    symbols = gpt2_byte_symbols()
    merges = [("t", "h"), ("th", "e"), (symbols[32], "the")]
    tokens = symbols + [a + b for a, b in merges] + ["<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab_json = json.dumps(vocab, ensure_ascii=False).encode()
    merges_txt = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode()
    tokenizer_json = json.dumps({
        "version": "1.0",
        "added_tokens": [{"id": len(tokens) - 1, "content": "<|endoftext|>", "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }, ensure_ascii=False).encode()
    return vocab_json, merges_txt, tokenizer_json


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = pathlib.Path(sys.argv[1]).resolve() / "fuzz" / "seeds"
    models = models_dir()
    fixtures = REPO / "tests" / "reference" / "fixtures"

    c = Corpus(root, "fuzz_llama2c")
    c.add("tiny_shared", llama2c_model())
    c.add("tiny_unshared", llama2c_model(shared=False))
    c.add("tiny_2layers", llama2c_model(dim=8, hidden=6, layers=2, heads=4, kv_heads=2, vocab=5, seq=3))
    c.add("versioned_magic", struct.pack("<Ii", 0x616B3432, 1) + b"\0" * 248)
    for name in ("stories260K/stories260K.bin", "aidreams260K/aidreams260K.bin"):
        c.add_prefixes(pathlib.Path(name).stem, models / name, 28)
    llama2c_count = c.count

    c = Corpus(root, "fuzz_gguf")
    c.add("tiny_f32", gguf_model(0))
    c.add("tiny_f16", gguf_model(1))
    c.add("tiny_no_vocab", gguf_model(0, with_vocab=False))
    c.add("empty_v2", b"GGUF" + struct.pack("<IQQ", 2, 0, 0))
    c.add("control_vector", gguf_control_vector())
    c.add("control_vector_block_0", gguf_control_vector((0, 1)))
    c.add("tiny_quantised", gguf_quantised_model())
    c.add("quant_blocks", (fixtures / "ggml_quants" / "blocks.gguf").read_bytes())
    c.add_prefixes("stories260K_gguf", models / "stories260K" / "stories260K.gguf", 24)
    gguf_count = c.count

    c = Corpus(root, "fuzz_safetensors")
    c.add("two_tensors", safetensors([("a", [2, 3], ramp(6)), ("b", [], [1.5])], {"note": "x\u00e9"}))
    c.add("empty_tensor", safetensors([("z", [0, 4], [])]))
    c.add("no_tensors", safetensors([]))
    c.add("checkpoint", checkpoint(False))
    c.add("checkpoint_adamw", checkpoint(True))
    for f in sorted((fixtures / "variants").glob("*.safetensors")) if fixtures.is_dir() else []:
        if f.stat().st_size <= MAX_SEED:
            c.add("fixture_" + f.stem, f.read_bytes())
    hf = models / "hf" / "tiny-random-gpt2" / "model.safetensors"
    if hf.is_file():
        with open(hf, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n <= MAX_SEED - 8:
                c.add("tiny_random_gpt2_header", struct.pack("<Q", n) + fh.read(n))
    safetensors_count = c.count

    c = Corpus(root, "fuzz_npy")
    c.add("f4_2x3", npy("<f4", [2, 3], f32s(ramp(6))))
    c.add("f8_vec", npy("<f8", [3], struct.pack("<3d", 1.0, -2.5, 1e300)))
    c.add("i4_scalar", npy("<i4", [], struct.pack("<i", -7)))
    c.add("i8_empty", npy("<i8", [0, 5], b""))
    c.add("f4_v2", npy("<f4", [1, 1, 2], f32s([0.5, 2.0]), major=2))
    small = sorted(f for f in fixtures.rglob("*.npy") if f.stat().st_size <= 2048) if fixtures.is_dir() else []
    for f in small[:8]:
        c.add("fixture_" + f.stem, f.read_bytes())
    npy_count = c.count

    c = Corpus(root, "fuzz_llama2c_tokenizer")
    c.add("tiny", tokenizer([b"<unk>", b"<s>", b"</s>", b"<0x41>", b" ", b"a", b" a", b"\xc3\xa9"]))
    c.add("bytes", tokenizer([b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(256)] + [b"  ", b"ab"]))
    for name in ("stories260K/tok512.bin", "aidreams260K/tok512.bin"):
        p = models / name
        if p.is_file():
            c.add(name.split("/")[0] + "_tok512", p.read_bytes())
    tokenizer_count = c.count

    c = Corpus(root, "fuzz_torch_pt")
    c.add("handmade", torch_pt([("w", "FloatStorage", "0", 4, 0, [2, 2], [2, 1])], [("0", f32s([1, 2, 3, 4]))]))
    c.add("view_f16", torch_pt([("a", "HalfStorage", "0", 6, 1, [2, 2], [1, 2]), ("b", "HalfStorage", "0", 6, 0, [3], [2])],
                               [("0", struct.pack("<6e", 1, 2, 3, 4, 5, 6))]))
    for f in sorted((fixtures / "torch_pt" / "synthetic").glob("*.pt")) if fixtures.is_dir() else []:
        with zipfile.ZipFile(f) as z:  # the bare pickles: the harness also wraps each input into an archive
            pickles = [n for n in z.namelist() if n.endswith("/data.pkl")]
            if pickles:
                c.add("pickle_" + f.stem, z.read(pickles[0]))
    synthetic = fixtures / "torch_pt" / "synthetic"
    for f in sorted(synthetic.glob("*.pt")) if synthetic.is_dir() else []:
        if f.stat().st_size <= MAX_SEED:
            c.add("fixture_" + f.stem, f.read_bytes())
    for name in ("arena/cumsum/cumsum_model.pt", "arena/palindrome/palindrome_classifier.pt"):
        p = models / name
        if p.is_file() and p.stat().st_size <= MAX_SEED:
            c.add(p.stem, p.read_bytes())
    torch_count = c.count


    vocab_json, merges_txt, tokenizer_json = gpt2_tiny_files()
    c = Corpus(root, "fuzz_json")
    c.add("scalars", b'[0, -1.5e-3, 1E+400, true, false, null, "s\\u00e9\\ud83e\\udd99\\n"]')
    c.add("nested", json.dumps({"a": {"b": [[{"c": []}]]}, "n": 18446744073709551615}).encode())
    c.add("config", json.dumps({"n_layers": 2, "d_model": 64, "eps": 1e-5, "act_fn": "gelu_new"}).encode())
    c.add("tiny_tokenizer_json", tokenizer_json)
    c.add("tiny_vocab_json", vocab_json)
    hf_tokenizer = tokenizers_dir() / "gpt2-hf" / "tokenizer.json"
    if hf_tokenizer.is_file():
        c.add("gpt2_tokenizer_json_prefix", hf_tokenizer.read_bytes()[:MAX_SEED])
    json_count = c.count

    c = Corpus(root, "fuzz_gpt2_vocab")
    c.add("vocab_merges", b"\x00" + vocab_json + b"\x00" + merges_txt)
    c.add("tokenizer_json", b"\x01" + tokenizer_json)
    c.add("tokenizer_json_pairs", b"\x01" + tokenizer_json.replace(b'"t h"', b'["t", "h"]'))
    c.add("text_ascii", b"\x02The theme of these three: 'tis the end.<|endoftext|>  \n\n\t")
    c.add("text_unicode", b"\x02" + "日本語 café 🦙 ½ \u3000x\r\n".encode())
    c.add("text_invalid_utf8", b"\x02a\xff\xfe\xc3 b\xed\xa0\x80")
    gpt2_count = c.count

    # fuzz_hf_config: first byte 0 config.json, 1 model.safetensors.index.json, 2 safetensors read with F16/BF16.
    c = Corpus(root, "fuzz_hf_config")
    hf_fixtures = fixtures / "huggingface"
    for folder in ("llama_bf16", "neox_sharded"):
        cfg = hf_fixtures / folder / "config.json"
        if cfg.is_file():
            c.add(f"config_{folder}", b"\x00" + cfg.read_bytes())
    gpt2_cfg = models / "hf" / "tiny-random-gpt2" / "config.json"
    if gpt2_cfg.is_file():
        c.add("config_tiny_random_gpt2", b"\x00" + gpt2_cfg.read_bytes())
    c.add("config_gpt2_minimal", b"\x00" + json.dumps({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2,
                                                       "vocab_size": 5, "n_positions": 4, "n_inner": None}).encode())
    c.add("config_neox_minimal", b"\x00" + json.dumps({"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 16,
                                                       "num_hidden_layers": 1, "num_attention_heads": 2,
                                                       "intermediate_size": 8, "vocab_size": 5,
                                                       "max_position_embeddings": 4, "rotary_pct": 0.5}).encode())
    index = hf_fixtures / "neox_sharded" / "model.safetensors.index.json"
    if index.is_file():
        c.add("index_neox", b"\x01" + index.read_bytes())
    c.add("index_minimal", b"\x01" + json.dumps({"metadata": {"total_size": 8},
                                                 "weight_map": {"a": "model-00001-of-00001.safetensors"}}).encode())
    halves = json.dumps({"h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                         "b": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [4, 8]}}).encode()
    halves += b" " * ((8 - len(halves) % 8) % 8)
    c.add("safetensors_halves", b"\x02" + struct.pack("<Q", len(halves)) + halves +
          struct.pack("<2e", 1.5, -0.25) + struct.pack("<2H", 0x3F80, 0xC000))
    hf_count = c.count

    # fuzz_sae_config: first byte even, a SAELens cfg.json; odd, a cfg.json, a NUL byte, then sae_weights.safetensors.
    c = Corpus(root, "fuzz_sae_config")
    sae_cfg = {"architecture": "jumprelu", "d_in": 2, "d_sae": 3, "dtype": "float32", "apply_b_dec_to_input": True,
               "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.0.hook_resid_post",
                            "hook_head_index": None}}
    c.add("cfg_jumprelu", b"\x00" + json.dumps(sae_cfg).encode())
    c.add("cfg_topk", b"\x00" + json.dumps(dict(sae_cfg, architecture="topk", k=2,
                                                  rescale_acts_by_decoder_norm=True)).encode())
    c.add("cfg_batchtopk", b"\x00" + json.dumps(dict(sae_cfg, architecture="batchtopk", k=1.5)).encode())
    c.add("cfg_legacy", b"\x00" + json.dumps({"d_in": 2, "d_sae": 3, "activation_fn_str": "topk",
                                                "activation_fn_kwargs": {"k": 1}, "hook_point": "blocks.0.hook_mlp_out",
                                                "normalize_activations": True}).encode())
    shapes = [("W_enc", [2, 3]), ("W_dec", [3, 2]), ("b_enc", [3]), ("b_dec", [2]), ("threshold", [3])]
    header, offset = {}, 0
    for name, shape in shapes:
        size = 4 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    weights = struct.pack("<Q", len(head)) + head + f32s([0.25 * i for i in range(offset // 4)])
    c.add("folder_jumprelu", b"\x01" + json.dumps(sae_cfg).encode() + b"\x00" + weights)
    for name in ("standard", "topk_rescale"):
        fixture = fixtures / "sae" / f"{name}.json"
        if fixture.is_file():
            data = json.loads(fixture.read_text())
            o = data["options"]
            cfg = {"architecture": o["architecture"], "d_in": data["d_in"], "d_sae": data["d_sae"],
                   "apply_b_dec_to_input": o["apply_b_dec_to_input"],
                   "normalize_activations": o["normalize_activations"]}
            if "k" in o:
                cfg["k"] = o["k"]
            c.add(f"cfg_{name}", b"\x00" + json.dumps(cfg).encode())
    sae_count = c.count

    # fuzz_transcoder_file: first byte even, a circuit-tracer layer_L.safetensors; odd, its config.yaml.
    c = Corpus(root, "fuzz_transcoder_file")
    for name in ("layer_0", "layer_1"):
        layer = fixtures / "transcoder" / f"{name}.safetensors"
        if layer.is_file():
            c.add(f"file_{name}", b"\x00" + layer.read_bytes())
    shapes = [("W_enc", [3, 2]), ("W_dec", [3, 2]), ("b_enc", [3]), ("b_dec", [2]),
              ("activation_function.threshold", [3]), ("W_skip", [2, 2])]
    header, offset = {}, 0
    for name, shape in shapes:
        size = 4 * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    c.add("file_minimal", b"\x00" + struct.pack("<Q", len(head)) + head + f32s([0.125 * i for i in range(offset // 4)]))
    config = fixtures / "transcoder" / "config.yaml"
    if config.is_file():
        c.add("config_gemma", b"\x01" + config.read_bytes())
    c.add("config_llama", b"\x01model_kind: transcoder_set\nfeature_input_hook: \"hook_resid_mid\"\n"
                          b"feature_output_hook: 'mlp.hook_out'\n")
    c.add("config_templated", b"\x01feature_input_hook: blocks.{layer}.ln2.hook_normalized  # comment\n"
                              b"feature_output_hook: blocks.{layer}.hook_mlp_out\n")
    # Regression: a name that is only the template prefix once crashed the harness (an empty hook was accepted).
    c.add("config_prefix_only", b"\x01feature_input_hook: blocks.{layer}.\nfeature_output_hook: hook_mlp_out\n")
    transcoder_count = c.count


    print(f"seeds in {root}: llama2c {llama2c_count}, gguf {gguf_count}, safetensors {safetensors_count}, "
          f"npy {npy_count}, llama2c_tokenizer {tokenizer_count}, torch_pt {torch_count}, json {json_count}, "
          f"gpt2_vocab {gpt2_count}, hf_config {hf_count}, sae_config {sae_count}, transcoder_file {transcoder_count}"
          + ("" if models.is_dir() else f" (no models at {models}: synthetic seeds only)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
