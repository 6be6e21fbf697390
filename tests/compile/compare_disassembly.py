#!/usr/bin/env python3
"""Compare the machine code of two object files function by function (the zero-overhead proof's codegen check).

    compare_disassembly.py --objdump objdump --expect same      A.o B.o [--entry NAME] [--alias FROM=TO ...]
    compare_disassembly.py --objdump objdump --expect different A.o B.o ...

Each object is disassembled with `objdump -d -r -C --no-show-raw-insn -w`; every function becomes a list of
normalised instructions: no addresses, branch targets as <function+offset>, relocations kept by symbol name with
compiler-numbered local labels (.LC12, .L5) and section offsets masked, trailing alignment padding dropped. Aliases
rename symbols of the second object (e.g. a probe policy's type to mechlens::no_hooks) before matching.

--expect same:      both objects hold the same functions and each has identical instructions (exit 0), else 1.
--expect different: at least one function present in both objects has different instructions (exit 0), else 1:
                    shows that the comparison is sensitive enough to see a single hook site.
Only the Python standard library is used.
"""

import argparse
import difflib
import re
import subprocess
import sys

FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")
INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
RELOCATION = re.compile(r"^\s*([0-9a-f]+): (R_\S+)\s+(.*)$")
INLINE_RELOCATION = re.compile(r"\s[0-9a-f]+: (R_\S+)\s+(.*)$")
PADDING = re.compile(r"^(nop\w*|xchg\s+%ax,%ax|data16\b.*|cs nop\w*.*|int3)\b")


def normalise_symbol(text):
    text = re.sub(r"\.LC\d+", ".LC", text)          # constant-pool labels are numbered per translation unit
    text = re.sub(r"\.L\d+", ".L", text)
    text = re.sub(r"\+0x[0-9a-f]+$", "+off", text) if text.startswith(".") else text  # section-relative offsets
    return text


def disassemble(objdump, path, aliases):
    out = subprocess.run([objdump, "-d", "-r", "-C", "--no-show-raw-insn", "-w", path],
                         check=True, capture_output=True, text=True).stdout
    for old, new in aliases:
        out = out.replace(old, new)
    functions = {}
    current = None
    for line in out.splitlines():
        m = FUNCTION.match(line)
        if m:
            current = m.group(1)
            functions.setdefault(current, [])
            continue
        if current is None:
            continue
        r = RELOCATION.match(line)
        if r:
            functions[current].append("  reloc " + r.group(2) + " " + normalise_symbol(r.group(3).strip()))
            continue
        m = INSTRUCTION.match(line)
        if m:
            text = m.group(2)
            reloc = None
            inline = INLINE_RELOCATION.search(text)  # with -w, objdump appends relocations to the instruction line
            if inline:
                text = text[:inline.start()]
                reloc = "  reloc " + inline.group(1) + " " + normalise_symbol(inline.group(2).strip())
            text = re.sub(r"\s*#.*$", "", text)                         # objdump's address comments
            text = re.sub(r"\b[0-9a-f]+ <", "<", text)                   # absolute branch targets
            text = re.sub(r"<(\.L\w*|\.text[^>+]*)(\+0x[0-9a-f]+)?>", "<local>", text)
            text = re.sub(r"\s+", " ", text).strip()
            functions[current].append(text)
            if reloc:
                functions[current].append(reloc)
    for name, body in functions.items():
        while body and PADDING.match(body[-1]):
            body.pop()
    return functions


def instruction_count(body):
    return sum(1 for line in body if not line.startswith("  reloc "))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objdump", default="objdump")
    parser.add_argument("--expect", choices=["same", "different"], required=True)
    parser.add_argument("--entry", default="mechlens_codegen_forward", help="function to report on")
    parser.add_argument("--alias", action="append", default=[], metavar="FROM=TO",
                        help="rename a symbol substring in the second object before comparing")
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args()
    aliases = [tuple(a.split("=", 1)) for a in args.alias]

    a = disassemble(args.objdump, args.first, [])
    b = disassemble(args.objdump, args.second, aliases)
    if args.entry not in a or args.entry not in b:
        print(f"FAIL: function {args.entry} missing from {'first' if args.entry not in a else 'second'} object")
        return 1

    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    common = sorted(set(a) & set(b))
    differing = [name for name in common if a[name] != b[name]]
    total = sum(instruction_count(a[name]) for name in a)
    print(f"{args.first}: {len(a)} functions, {total} instructions; "
          f"{args.entry}: {instruction_count(a[args.entry])} instructions")
    print(f"{args.second}: {len(b)} functions, {sum(instruction_count(b[n]) for n in b)} instructions; "
          f"{args.entry}: {instruction_count(b[args.entry])} instructions")
    for name in ("mechlens::v0_1::forward<", "mechlens::v0_1::detail::run_block<",
                 "mechlens::v0_1::detail::attend<", "mechlens::v0_1::detail::project_heads<"):
        for n in a:
            if name in n and "[clone" not in n and ".cold" not in n:
                print(f"  {n.split('(')[0]}: {instruction_count(a[n])} instructions")
    for name in only_a:
        print(f"  only in first:  {name}")
    for name in only_b:
        print(f"  only in second: {name}")
    for name in differing:
        print(f"  differs: {name} ({instruction_count(a[name])} vs {instruction_count(b[name])} instructions)")

    if args.expect == "same":
        if only_a or only_b or differing:
            for name in differing[:3]:
                diff = difflib.unified_diff(a[name], b[name], "first", "second", lineterm="", n=2)
                print("\n".join(list(diff)[:60]))
            print("FAIL: the no_hooks forward pass and the hook-stripped one compile to different code")
            return 1
        print(f"PASS: {len(common)} functions, {total} instructions, identical")
        return 0
    if differing:
        print(f"PASS: {len(differing)} of {len(common)} shared functions differ, as they must")
        return 0
    print("FAIL: the probe's hook left every shared function unchanged; the comparison cannot see hooks")
    return 1


if __name__ == "__main__":
    sys.exit(main())
