#!/usr/bin/env python3
"""Checks a .npy written by `mechlens logits` with the standard library only: format, dtype, shape, and values
against a reference .npy (max abs difference <= tolerance; with a sixth argument "differ", > tolerance).
Usage: check_npy.py ACTUAL EXPECTED ROWS COLS TOL [differ]"""
import ast
import struct
import sys


def read_npy(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        sys.exit(f"{path}: not a .npy file")
    major = data[6]
    if major == 1:
        header_len = struct.unpack_from("<H", data, 8)[0]
        start = 10
    else:
        header_len = struct.unpack_from("<I", data, 8)[0]
        start = 12
    header = ast.literal_eval(data[start:start + header_len].decode("latin1"))
    if (start + header_len) % 64 != 0:
        sys.exit(f"{path}: data does not start at a multiple of 64 bytes")
    body = data[start + header_len:]
    descr, shape = header["descr"], tuple(header["shape"])
    count = 1
    for n in shape:
        count *= n
    code = {"<f4": "f", "<f8": "d", "<i4": "i", "<i8": "q"}[descr]
    size = struct.calcsize(code)
    if len(body) != count * size or header["fortran_order"]:
        sys.exit(f"{path}: {len(body)} data bytes for shape {shape} of {descr}")
    return descr, shape, struct.unpack(f"<{count}{code}", body)


def main():
    actual, expected, rows, cols, tol = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    descr, shape, values = read_npy(actual)
    if descr != "<f4" or shape != (rows, cols):
        sys.exit(f"{actual}: got {descr} {shape}, expected <f4 ({rows}, {cols})")
    _, ref_shape, ref = read_npy(expected)
    if len(ref) != len(values):
        sys.exit(f"reference {expected} has shape {ref_shape}")
    worst = max(abs(a - b) for a, b in zip(values, ref))
    print(f"{actual}: <f4 {shape}, max abs difference to the reference {worst:.3g}")
    differ = len(sys.argv) > 6 and sys.argv[6] == "differ"
    if differ and worst <= tol:
        sys.exit(f"max abs difference {worst} does not exceed {tol}: the values should differ")
    if not differ and worst > tol:
        sys.exit(f"max abs difference {worst} exceeds {tol}")
    print("PASS")


if __name__ == "__main__":
    main()
