#!/usr/bin/python3
"""Fixtures for mechlens's reader of torch.save state dicts (include/mechlens/io/torch_state_dict.hpp).

Writes into fixtures/torch_pt/ (see its README.md):
  * arena.json: for each of the four ARENA TransformerLens models in <models>/arena/ (sha256-checked), loaded with
    torch.load(weights_only=True), every tensor's name, shape, dtype, element count, sum and sum of squares (float64
    over the values converted to float32, as mechlens converts them) and its first and last 4 values in row-major
    order. Non-finite numbers are written as the strings "inf", "-inf", "nan".
  * synthetic/*.pt: tiny files torch.save wrote (dtypes, views, shared storages, nested dicts with _metadata,
    parameters) and hand-made hostile ones (forbidden globals, bad offsets, huge sizes, compressed entries, CRC
    errors), with synthetic.json listing what each good file must hold (every value) and what each bad file's error
    must mention.

Run with Debian's python (torch 1.13, numpy):

    /usr/bin/python3 tests/reference/torch_pt_reference.py [--models ../shared/models] [--out tests/reference/fixtures/torch_pt]

Re-running writes byte-identical files (zip timestamps are fixed, pickles are deterministic).
"""
import argparse
import collections
import hashlib
import io
import json
import math
import os
import pathlib
import struct
import sys
import zipfile

import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
ARENA = {
    "cumsum": ("cumsum/cumsum_model.pt", "0acc75629bf0dd3ec8a2300ec567a2b9b05414c45a768239f7a811f791a2f02e"),
    "palindrome": ("palindrome/palindrome_classifier.pt",
                   "2e02564bcfab9028e9b86c96ab030c2235d60e7e2043cc29d69b473998038936"),
    "sorted_list": ("sorted_list/sorted_list_model.pt",
                    "d981231d29a5102377f0f3e936895980a76bea719f78b4d02ab191b84f0d50e3"),
    "sum": ("sum/sum_model.pt", "d18404bb039f42c62f1f23b78ba858a5d24d2af12ec224e249a9d88d46d6c21a"),
}
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
               torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
               torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}


def number(x: float):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """The values as mechlens holds them: converted to float32, row-major."""
    return t.detach().to(torch.float32).contiguous().reshape(-1)


def tensor_summary(name: str, t: torch.Tensor) -> dict:
    v = as_float32(t).to(torch.float64)
    return {"name": name, "shape": list(t.shape), "dtype": DTYPE_NAMES[t.dtype], "numel": t.numel(),
            "sum": number(v.sum().item()), "sum_sq": number((v * v).sum().item()),
            "first": [number(x) for x in v[:4].tolist()], "last": [number(x) for x in v[-4:].tolist()]}


def flatten(d, prefix=""):
    """(name, tensor) pairs of nested dicts, depth-first in insertion order; other values skipped (as mechlens)."""
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            yield prefix + k, v
        elif isinstance(v, dict):
            yield from flatten(v, prefix + k + ".")


# ---- hand-made archives --------------------------------------------------------------------------------------------

def write_zip(path: pathlib.Path, entries, compress=()) -> None:
    """A stored ZIP (deflated for names in `compress`) with a fixed timestamp."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(info, data)
    path.write_bytes(buf.getvalue())


def unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def small_int(n: int) -> bytes:
    return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)


def int_tuple(xs) -> bytes:
    return b"(" + b"".join(small_int(x) for x in xs) + b"t"


def state_dict_pickle(tensors) -> bytes:
    """A protocol-2 pickle of OrderedDict{name: _rebuild_tensor_v2(storage, offset, size, stride, False, {})};
    tensors: (name, storage type, key, numel, offset, size, stride)."""
    out = b"\x80\x02ccollections\nOrderedDict\n)R("
    for name, stype, key, numel, offset, size, stride in tensors:
        out += unicode(name)
        out += b"ctorch._utils\n_rebuild_tensor_v2\n("
        out += b"(" + unicode("storage") + b"ctorch\n" + stype.encode() + b"\n" + unicode(key) + unicode("cpu")
        out += small_int(numel) + b"tQ"
        out += small_int(offset) + int_tuple(size) + int_tuple(stride) + b"\x89}tR"
    return out + b"u."


def archive(path, pickle_bytes, storages, extra=(), compress=()) -> None:
    entries = [("archive/data.pkl", pickle_bytes)] + [("archive/data/" + k, v) for k, v in storages]
    entries += list(extra) + [("archive/version", b"3\n")]
    write_zip(path, entries, compress)


def f32(*xs) -> bytes:
    return struct.pack(f"<{len(xs)}f", *xs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.environ.get("MECHLENS_MODELS", str(REPO.parent / "shared" / "models")))
    ap.add_argument("--out", default=str(REPO / "tests" / "reference" / "fixtures" / "torch_pt"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # ---- the ARENA models
    arena = {}
    for model, (rel, sha) in ARENA.items():
        path = pathlib.Path(args.models) / "arena" / rel
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha:
            sys.exit(f"{path}: sha256 {digest}, expected {sha}")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        arena[model] = {"file": "arena/" + rel, "sha256": sha,
                        "tensors": [tensor_summary(n, t) for n, t in flatten(sd)]}
    (out / "arena.json").write_text(json.dumps(arena, indent=1) + "\n")

    # ---- good synthetic files written by torch.save
    syn = out / "synthetic"
    good = {}

    def save(name, obj):
        torch.save(obj, syn / name)

        back = torch.load(syn / name)  # our own file; torch 1.13's weights_only lacks BINFLOAT
        good[name] = [{"name": n, "shape": list(t.shape), "dtype": DTYPE_NAMES[t.dtype],
                       "values": [number(x) for x in as_float32(t).tolist()]} for n, t in flatten(back)]

    base = torch.randn(3, 4)
    save("dtypes.pt", collections.OrderedDict([
        ("f32", base.clone()), ("f16", base.to(torch.float16)), ("bf16", base.to(torch.bfloat16)),
        ("f64", base.to(torch.float64) / 3), ("i64", torch.tensor([-5, 0, 7, 2 ** 40])),
        ("i32", torch.tensor([-3, 9], dtype=torch.int32)), ("i16", torch.tensor([-300], dtype=torch.int16)),
        ("i8", torch.tensor([-128, 127], dtype=torch.int8)), ("u8", torch.tensor([0, 255], dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True])), ("scalar", torch.tensor(-2.5)),
        ("empty", torch.zeros(0, 3)), ("special", torch.tensor([float("inf"), float("-inf"), -0.0, 1e-40]))]))
    shared = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    save("views.pt", collections.OrderedDict([
        ("transposed", shared.t()), ("rows", shared[1:3]), ("strided", shared[::2, 1::2]),
        ("column", shared[:, 5]), ("expanded", torch.tensor([1.5, -2.0]).expand(3, 2)),
        ("whole", shared), ("permuted", torch.arange(24.).reshape(2, 3, 4).permute(2, 0, 1))]))
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2), torch.nn.BatchNorm1d(2))
    save("module.pt", module.state_dict())
    save("nested.pt", {"model": module.state_dict(), "step": 7, "lr": 0.5, "name": "x",
                       "optim": {"inner": {"w": torch.ones(2, dtype=torch.float16)}}})
    save("parameters.pt", module.state_dict(keep_vars=True))

    # ---- hostile or unsupported files, hand-made
    bad = {}
    data = f32(1, 2, 3, 4)
    one = [("w", "FloatStorage", "0", 4, 0, [2, 2], [2, 1])]
    archive(syn / "ok_handmade.pt", state_dict_pickle(one), [("0", data)])
    good["ok_handmade.pt"] = [{"name": "w", "shape": [2, 2], "dtype": "float32", "values": [1.0, 2.0, 3.0, 4.0]}]
    big = struct.pack(">4f", 1, 2, 3, 4)
    archive(syn / "big_endian.pt", state_dict_pickle(one), [("0", big)], extra=[("archive/byteorder", b"big")])
    good["big_endian.pt"] = good["ok_handmade.pt"]

    def hostile(name, pickle_bytes, storages, mention, **kw):
        archive(syn / name, pickle_bytes, storages, **kw)
        bad[name] = mention

    hostile("os_system.pt", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.", [], "os.system")
    hostile("builtins_eval.pt", b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.", [], "builtins.eval")
    hostile("posix_system_in_dict.pt", state_dict_pickle(one)[:-2] + b"X\x01\x00\x00\x00xcposix\nsystem\nsu.",
            [("0", data)], "posix.system")
    hostile("offset_past_end.pt", state_dict_pickle([("w", "FloatStorage", "0", 4, 3, [2], [1])]), [("0", data)],
            "reaches element")
    hostile("stride_past_end.pt", state_dict_pickle([("w", "FloatStorage", "0", 4, 0, [2, 2], [3, 1])]),
            [("0", data)], "reaches element")
    hostile("huge_storage.pt", state_dict_pickle([("w", "FloatStorage", "0", 2 ** 31 - 1, 0, [2], [1])]),
            [("0", data)], "bytes, but")
    hostile("huge_view.pt", state_dict_pickle([("w", "FloatStorage", "0", 4, 0, [2 ** 20, 2 ** 20], [0, 0])]),
            [("0", data)], "more than the archive can justify")
    hostile("missing_storage.pt", state_dict_pickle([("w", "FloatStorage", "7", 4, 0, [4], [1])]), [("0", data)],
            "missing")
    hostile("compressed.pt", state_dict_pickle([("w", "FloatStorage", "0", 256, 0, [256], [1])]), [("0", data * 64)], "compressed",
            compress=("archive/data/0",))
    hostile("complex_storage.pt", state_dict_pickle([("w", "ComplexFloatStorage", "0", 2, 0, [2], [1])]),
            [("0", data)], "torch.ComplexFloatStorage")
    hostile("self_dict.pt", b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.", [], "appears twice")
    hostile("not_a_dict.pt", b"\x80\x02]q\x00.", [], "does not hold a dict")
    # A CRC error: a valid file with one data byte changed after the fact.
    archive(syn / "bad_crc.pt", state_dict_pickle(one), [("0", data)])
    raw = bytearray((syn / "bad_crc.pt").read_bytes())
    raw[raw.index(data) + 5] ^= 0x40
    (syn / "bad_crc.pt").write_bytes(bytes(raw))
    bad["bad_crc.pt"] = "CRC-32"

    for name, mention in bad.items():  # PyTorch's own weights_only loader refuses them too (or fails)
        try:
            torch.load(syn / name, weights_only=True)
            print(f"note: torch.load(weights_only=True) accepts {name}, which mechlens rejects")
        except Exception:
            pass
    (out / "synthetic.json").write_text(json.dumps({"good": good, "bad": bad}, indent=1) + "\n")
    total = sum(p.stat().st_size for p in syn.iterdir())
    print(f"wrote {out}/arena.json ({len(arena)} models), synthetic.json and {len(list(syn.iterdir()))} files "
          f"({total} bytes) in {syn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
