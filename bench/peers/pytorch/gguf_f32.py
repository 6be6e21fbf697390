#!/usr/bin/env python3
"""A minimal GGUF (v2 and v3) reader in numpy for the PyTorch peer: the header, every metadata key/value (all GGUF
value types, arrays and strings included), the tensor infos, and the F32 (type 0) tensors as read-only np.memmap
views of the file. Any other tensor type raises GGUFError naming the tensor and its type: this reader is for the F32
files of the speed comparisons only. GGUF lists dimensions innermost first, so a tensor of dims [ne0, ne1] comes
back as a numpy array of shape (ne1, ne0) (row-major, the last axis contiguous).

    from gguf_f32 import read_gguf
    metadata, tensors = read_gguf("model.gguf")          # dict, dict name -> np.ndarray (float32, memory-mapped)

    /usr/bin/python3 bench/peers/pytorch/gguf_f32.py FILE.gguf    # prints the metadata (arrays shortened), tensors
"""
import struct
import sys

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
F32 = 0

# Value type id -> struct format of the scalar types (little-endian); 8 = string and 9 = array are handled apart.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SCALAR_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8",
                  11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
# Tensor type ids, for error messages only.
_TENSOR_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
                      10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 24: "I8", 25: "I16",
                      26: "I32", 27: "I64", 28: "F64", 30: "BF16"}


class GGUFError(ValueError):
    pass


class _Cursor:
    """Reads little-endian values from a bytes-like buffer, advancing an offset."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated at byte {self.pos} (wanted {n} more)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def string(self):
        n = self.scalar("<Q")
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def value(self, vtype):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype in _SCALAR_DTYPES:  # numeric arrays in one go (token scores and types can be long)
                dtype = np.dtype(_SCALAR_DTYPES[etype])
                raw = self.take(count * dtype.itemsize)
                arr = np.frombuffer(raw, dtype=dtype).copy()
                return arr.astype(bool) if etype == 7 else arr
            return [self.value(etype) for _ in range(count)]
        raise GGUFError(f"{self.path}: unknown metadata value type {vtype} at byte {self.pos}")


def read_gguf(path, load_tensors=True, mode="r"):
    """Returns (metadata, tensors): metadata maps each key to its value (ints, floats, bools, strings; arrays as numpy
    arrays of numbers or lists of strings/arrays), plus "GGUF.version" -> the file's version and "__tensor_info__" ->
    {name: (numpy shape, type id, offset from the data section)};
    tensors maps each tensor name to a float32 np.memmap of its numpy shape (empty when load_tensors is False);
    mode is np.memmap's: "r" read-only, "c" copy-on-write (writable views, e.g. for torch.from_numpy)."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(mm), path)
    if bytes(cur.take(4)) != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (bad magic)")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3 only)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata = {"GGUF.version": version}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = {}
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("<I")
        dims = [cur.scalar("<Q") for _ in range(n_dims)]
        ttype, offset = cur.scalar("<I"), cur.scalar("<Q")
        infos[name] = (tuple(reversed(dims)), ttype, offset)  # innermost first in the file, last axis in numpy
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0:
        raise GGUFError(f"{path}: general.alignment {alignment} is not positive")
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    metadata["__tensor_info__"] = infos
    tensors = {}
    if load_tensors:
        for name, (shape, ttype, offset) in infos.items():
            if ttype != F32:
                kind = _TENSOR_TYPE_NAMES.get(ttype, f"type {ttype}")
                raise GGUFError(f"{path}: tensor {name} is {kind}; this reader handles F32 (type 0) only "
                                f"(use an F32 GGUF, e.g. `llama-quantize ... F32` or make_shape_gguf.py)")
            count = int(np.prod(shape, dtype=np.int64))
            start = data_start + offset
            if start + 4 * count > len(mm):
                raise GGUFError(f"{path}: tensor {name} runs past the end of the file")
            tensors[name] = np.memmap(path, dtype="<f4", mode=mode, offset=start, shape=shape)
    return metadata, tensors


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gguf_f32.py FILE.gguf")
    metadata, _ = read_gguf(sys.argv[1], load_tensors=False)
    infos = metadata.pop("__tensor_info__")
    for key, value in metadata.items():
        if isinstance(value, (list, np.ndarray)) and len(value) > 6:
            value = f"[{', '.join(repr(v) for v in list(value[:4]))}, ...] ({len(value)} items)"
        print(f"{key} = {value}")
    for name, (shape, ttype, offset) in infos.items():
        print(f"{name}: shape {shape}, {_TENSOR_TYPE_NAMES.get(ttype, ttype)}, offset {offset}")


if __name__ == "__main__":
    main()
