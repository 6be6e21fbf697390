#!/usr/bin/python3
"""GPT-2 tokenizer fixture: token ids of a corpus of hard strings, from an independent Python implementation.

Neither Hugging Face `tokenizers` nor `transformers` is installed here, so this is a from-the-description
implementation of GPT-2's encoder: pre-tokenisation with the `regex` module (the engine GPT-2's own encoder.py
uses) and GPT-2's exact pattern; the byte-to-unicode map; and the original merge loop (take the adjacent pair of
lowest rank, merge every occurrence of it left to right, repeat), which differs in structure from mechlens's
heap-based merging. It reads vocab.json and merges.txt with the standard library only.

    /usr/bin/python3 tests/reference/gpt2_tokenizer_reference.py --tokenizers ../shared/tokenizers

writes tests/reference/fixtures/gpt2_tokenizer/hard_strings.json (byte-identical on re-runs). Each case holds
the text, its ids with special tokens treated as text ("ids") and, when it contains `<|endoftext|>`, its ids with
special tokens matched first ("ids_special"). Built-in checks, fatal on failure: "Hello world" encodes to
[15496, 995] and every case decodes back to its text.
"""

import argparse
import json
import os
import pathlib
import sys

import regex

PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SPECIAL = "<|endoftext|>"

# Each a reason to break a tokenizer: scripts, marks, emoji, digits, whitespace of every kind, contractions.
HARD_STRINGS = [
    "Hello world",
    "",
    " ",
    "a",
    "🦙",
    "👍🏽 thumbs up, 👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag",
    "日本語のテキストと中文文本和한국어",
    "我想在apple工作1314151天～",
    "café, naïve, résumé, Ångström, façade",
    "cafe\u0301 (e + combining acute) vs caf\u00e9",
    "a\u0308\u0301\u0323 stacked marks, Z\u0351\u034c\u0327a\u0360l\u0364go",
    "Ελληνικά: καλημέρα κόσμε",
    "Русский текст, Български език",
    "עברית ועברית; العربية والعربية",
    "हिन्दी में लिखा",
    "ไทย ภาษาไทย",
    "1234567890 3.14159 1,000,000 1e-10 0x1F",
    "٣٤٥ Arabic-Indic digits, ½ ¾ ² ³ Ⅻ ① fractions and numerals",
    "  two spaces   three    four",
    "trailing spaces   ",
    "   leading spaces",
    "tab\there\t\tand\t",
    "line\nbreak\n\nand\n\n\n",
    "windows\r\nline\r\nends\r\n",
    " \n \t \r\n  x",
    "\u00a0non-breaking\u00a0space\u2003em\u3000ideographic",
    "it's, can't, we're, they've, I'm, we'll, he'd",
    "IT'S, CAN'T, WE'RE, THEY'VE, I'M, WE'LL, HE'D",
    "'s 'S 't 'T 're 'RE 've 'Ve 'm 'M 'll 'lL 'd 'D",
    "rock 'n' roll, 'quoted', ''double'', '''triple'''",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "one <|endoftext|> two<|endoftext|><|endoftext|> three",
    "<|endoftext",
    "!!!???...,,,;;;:::---===+++***",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "def f(x):\n    return x ** 2  # square\n",
    "{\"json\": [1, 2, {\"k\": null}]}",
    "Mixed123Numbers456and789Letters",
    "ẞ ß ﬁ ﬀ ǅ ǈ ǋ",
    "\u200b zero\u200bwidth\u200cnon\u200djoiner \ufeff bom",
    "Cửa Việt",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝟙𝟚𝟛",
    "control\x01\x02\x7f chars",
    "The quick brown fox jumps over the lazy dog. " * 3,
]


def bytes_to_unicode() -> dict:
    """GPT-2's map: printable Latin-1 bytes stand for themselves, the other 68 for U+0100 onwards in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Encoder:
    def __init__(self, vocab_path: pathlib.Path, merges_path: pathlib.Path):
        self.vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        self.inverse = {i: t for t, i in self.vocab.items()}
        lines = merges_path.read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        self.ranks = {pair: rank for rank, pair in reversed(list(enumerate(merges)))}
        self.byte_map = bytes_to_unicode()
        self.unbyte = {c: b for b, c in self.byte_map.items()}

    def bpe(self, word: tuple) -> list:
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return [self.vocab[t] for t in word]

    def encode_ordinary(self, text: str) -> list:
        ids = []
        for piece in PATTERN.findall(text):
            ids += self.bpe(tuple(self.byte_map[b] for b in piece.encode("utf-8")))
        return ids

    def encode_special(self, text: str) -> list:
        ids = []
        parts = text.split(SPECIAL)
        for k, part in enumerate(parts):
            ids += self.encode_ordinary(part)
            if k + 1 < len(parts):
                ids.append(self.vocab[SPECIAL])
        return ids

    def decode(self, ids: list) -> str:
        out = bytearray()
        for i in ids:
            token = self.inverse[i]
            out += token.encode("utf-8") if token == SPECIAL else bytes(self.unbyte[c] for c in token)
        return out.decode("utf-8")


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent
    default_tokenizers = os.environ.get("MECHLENS_TOKENIZERS", str(here.parents[2] / "shared" / "tokenizers"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", default=default_tokenizers, help="directory holding gpt2-hf/")
    parser.add_argument("--out", default=str(here / "fixtures"), help="fixtures directory")
    args = parser.parse_args()
    hf = pathlib.Path(args.tokenizers) / "gpt2-hf"
    enc = Encoder(hf / "vocab.json", hf / "merges.txt")
    if enc.encode_ordinary("Hello world") != [15496, 995]:
        sys.exit("reference check failed: 'Hello world' is not [15496, 995]")
    cases = []
    for text in HARD_STRINGS:
        case = {"text": text, "ids": enc.encode_ordinary(text)}
        if SPECIAL in text:
            case["ids_special"] = enc.encode_special(text)
        for key in ("ids", "ids_special"):
            if key in case and enc.decode(case[key]) != text:
                sys.exit(f"reference check failed: {text!r} does not round-trip through {key}")
        cases.append(case)
    out_dir = pathlib.Path(args.out) / "gpt2_tokenizer"
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "description": "GPT-2 token ids of hard strings, by tests/reference/gpt2_tokenizer_reference.py "
                       "(regex module + GPT-2's merge loop over gpt2-hf/vocab.json and merges.txt)",
        "regex_module_version": regex.__version__,
        "cases": cases,
    }
    text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
    (out_dir / "hard_strings.json").write_text(text, encoding="utf-8")
    print(f"wrote {out_dir / 'hard_strings.json'}: {len(cases)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
