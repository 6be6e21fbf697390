#!/usr/bin/env python3
"""Checks that two (pos, vocab) logits .npy files written by `mechlens logits` give the same log-probabilities
(log-softmax over the last axis; weight processing may shift every logit of a position by one constant), with the
standard library only. Usage: check_logprobs.py A.npy B.npy ROWS COLS TOL"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_npy import read_npy  # noqa: E402


def log_softmax(row):
    top = max(row)
    total = math.log(sum(math.exp(x - top) for x in row))
    return [x - top - total for x in row]


def main():
    a_path, b_path, rows, cols, tol = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    rows_of = {}
    for path in (a_path, b_path):
        descr, shape, values = read_npy(path)
        if descr != "<f4" or shape != (rows, cols):
            sys.exit(f"{path}: got {descr} {shape}, expected <f4 ({rows}, {cols})")
        rows_of[path] = [log_softmax(values[r * cols:(r + 1) * cols]) for r in range(rows)]
    worst = max(abs(x - y) for ra, rb in zip(rows_of[a_path], rows_of[b_path]) for x, y in zip(ra, rb))
    raw_a, raw_b = read_npy(a_path)[2], read_npy(b_path)[2]
    raw = max(abs(x - y) for x, y in zip(raw_a, raw_b))
    print(f"({rows}, {cols}): max |log-prob difference| {worst:.3g} (max |logit difference| {raw:.3g})")
    if worst > tol:
        sys.exit(f"max log-prob difference {worst} exceeds {tol}")
    print("PASS")


if __name__ == "__main__":
    main()
