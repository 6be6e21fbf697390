#!/usr/bin/env python3
"""Reads a control vector GGUF file with the standard library only, the way llama.cpp's loader checks it, and
compares direction.N with a direction saved as .npy (optional).

Usage: check_control_vector.py FILE.gguf EXPECTED_LAYERS [N DIRECTION.npy TOLERANCE]
  EXPECTED_LAYERS: comma-separated block numbers the file must hold, e.g. 1,2,3,4.
Prints PASS or a reason and exits 1.
"""
import struct
import sys

TYPE_SIZES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def fail(reason):
    print("FAIL:", reason)
    sys.exit(1)


def read_gguf(path):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            fail("truncated at byte %d" % pos)
        value = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return value[0] if len(value) == 1 else value

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            element, count = take("I"), take("Q")
            return [value(element) for _ in range(count)]
        return take(TYPE_SIZES[kind])

    if data[:4] != b"GGUF":
        fail("no GGUF magic")
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    metadata = {}
    for _ in range(n_kv):
        key = string()
        kind = take("I")
        metadata[key] = (kind, value(kind))
    tensors = []
    for _ in range(n_tensors):
        name = string()
        n_dims = take("I")
        dims = [take("Q") for _ in range(n_dims)]
        ggml_type, offset = take("I"), take("Q")
        tensors.append((name, dims, ggml_type, offset))
    alignment = metadata.get("general.alignment", (4, 32))[1]
    start = (pos + alignment - 1) // alignment * alignment
    values = {}
    for name, dims, ggml_type, offset in tensors:
        if ggml_type != 0:
            fail("%s is not F32 (type %d)" % (name, ggml_type))
        if len(dims) != 1:
            fail("%s is not 1-D" % name)
        if offset % alignment:
            fail("%s is not aligned" % name)
        at = start + offset
        values[name] = struct.unpack_from("<%df" % dims[0], data, at)
    return version, metadata, values


def main():
    if len(sys.argv) not in (3, 6):
        print(__doc__)
        sys.exit(2)
    version, metadata, values = read_gguf(sys.argv[1])
    if version != 3:
        fail("version %d" % version)
    if metadata.get("general.architecture", (None, None))[1] != "controlvector":
        fail("general.architecture is not controlvector")
    if "controlvector.model_hint" not in metadata or metadata["controlvector.model_hint"][0] != 8:
        fail("controlvector.model_hint missing or not a string")
    layer_count = metadata.get("controlvector.layer_count")
    if layer_count is None or layer_count[0] != 5:
        fail("controlvector.layer_count missing or not int32")
    expected = sorted(int(x) for x in sys.argv[2].split(","))
    found = sorted(int(name.split(".", 1)[1]) for name in values if name.startswith("direction."))
    if len(found) != len(values) or found != expected:
        fail("tensors %s, expected direction.N for N in %s" % (sorted(values), expected))
    if layer_count[1] != len(expected):
        fail("layer_count %d for %d directions" % (layer_count[1], len(expected)))
    if 0 in found:
        fail("direction.0 present")
    widths = {len(v) for v in values.values()}
    if len(widths) != 1:
        fail("directions of different widths %s" % widths)
    if len(sys.argv) == 6:
        import numpy

        layer, npy, tolerance = int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
        reference = numpy.load(npy).astype(numpy.float64).reshape(-1)
        got = numpy.array(values["direction.%d" % layer], dtype=numpy.float64)
        if got.shape != reference.shape:
            fail("direction.%d has %d values, the .npy %d" % (layer, got.size, reference.size))
        error = float(numpy.max(numpy.abs(got - reference)))
        if error > tolerance:
            fail("direction.%d differs from %s by %g" % (layer, npy, error))
        print("direction.%d equals %s within %g" % (layer, npy, error))
    print("PASS: control vector with directions %s of width %d" % (found, widths.pop()))


if __name__ == "__main__":
    main()
