#!/usr/bin/env python3
"""Expected text-tokenizer ids, computed by the Python `tokenizers` package (what ml-4m runs).

What it does: loads ml-4m's WordPiece tokenizer JSON with `tokenizers.Tokenizer.from_file`,
encodes a fixed list of hand-written strings (punctuation, digits, accents, CJK, emoji,
sentinels, coordinate and object-class tokens, edge cases) plus deterministic synthetic
captions drawn from the tokenizer's own vocabulary, exactly as ml-4m does
(`tokenizer.encode(text).ids`), decodes the ids back (`tokenizer.decode(ids)`, special tokens
skipped, and with them kept) and writes everything to a JSON fixture that tessera's Rust tests
compare against (tokenizers/tests/text_tokenizer.rs).

How to run it (once; commit the fixture). Any Python with the `tokenizers` package works, e.g.
the peer venv of tools/ml4m_reference/forward_losses.py:

  /work/peervenv/bin/python tools/ml4m_reference/make_text_fixture.py \
      [--tokenizer ../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json] \
      [--out tokenizers/tests/fixtures/text_ids.json] [--captions 300 --seed 0]

The tokenizer JSON is ml-4m's fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json
(a copy lives in the shared data folder); it is read, never copied into this repository. The
fixture records its SHA-256 so a test can tell a changed file from a tokenizer bug.
"""
import argparse
import hashlib
import json
import os
import random
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Hand-written cases: each exercises one part of BertNormalizer / BertPreTokenizer / WordPiece /
# the added-token matcher (single_word, normalized or not).
CASES = [
    # reference §2.1 examples
    "v0=12 v1=34 v2=100 v3=200 dining table v0=1 v1=2 v2=3 v3=4 person",
    "[S_1]",
    "a",
    "[S_0] a man [S_1] riding a horse [S_2]",
    "human pose global shape camera none point polygon",
    # punctuation and digits
    "A man, riding a horse; at 3:45pm (approx.) -- isn't it great?!",
    "Prices: $12.99, 100%, #1, e-mail@example.com, C++ & C#... 'quoted' \"double\"",
    "1234567890 3.14159 2,000,000 1st 2nd 3rd 21st-century",
    # accents (strip_accents follows lowercase: stripped)
    "Café crème brûlée à la carte, naïve façade, Ångström, São Paulo, Zürich",
    "ÉCOLE NORMALE SUPÉRIEURE",
    # CJK (each ideograph is its own word), kana, hangul, other scripts
    "一只猫坐在桌子上。",
    "東京タワーの写真",
    "고양이가 탁자 위에 앉아 있다",
    "Кошка сидит на столе",
    "القطة تجلس على الطاولة",
    "बिल्ली मेज़ पर बैठी है",
    # emoji (not in the vocabulary -> [UNK]), ZWJ sequences, symbols
    "a dog 🐶 and a cat 🐱 😀",
    "family 👨‍👩‍👧 flag 🇨🇭 heart ❤️",
    "temperature 25°C ± 2 → ∞ ≈ π",
    # whitespace and control characters (clean_text)
    "tabs\tand\nnewlines\r\n  multiple   spaces ",
    "zero\u200bwidth\u00a0nbsp\u0007bell\ufeffbom",
    "",
    "   ",
    # added tokens: case, adjacency, single_word, normalized
    "Dining Table PERSON Teddy Bear hot dog hotdog",
    "persons personal dining tables a person.",
    "v0=999 v3=999 v0=1000 v4=1 V0=1 v0=01",
    "v0=12,v1=34 (v2=5) [S_3]. x[S_4] [S_5]y",
    "[s_1] [S_200] [S_199] [PAD] [UNK] [SOS] [EOS] [EOS][EOS]",
    "cell phone, stop sign. traffic light! wine glass?",
    # WordPiece: sub-words, long words, unknown
    "unbelievably antidisestablishmentarianism photobombing selfie",
    "x" * 101,
    "y" * 100,
    "xylophonist's quizzically juxtaposed zeugma",
]


def make_captions(tok, n, seed):
    """The peers' synthetic caption recipe (shared/peers/tokenize_text.py), smaller."""
    rng = random.Random(seed)
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if re.fullmatch(r"[a-z]{2,}", w))
    pieces = sorted(w[2:] for w in vocab if re.fullmatch(r"##[a-z]{2,}", w))
    added = [t.content for t in tok.get_added_tokens_decoder().values()]
    classes = sorted(t for t in added if not re.fullmatch(r"(\[[A-Z_0-9]+\]|v\d=\d+)", t))
    caps = []
    for _ in range(n):
        ws = []
        for _ in range(rng.randint(5, 40)):
            r = rng.random()
            if r < 0.05:
                w = rng.choice(classes)
            elif r < 0.08:
                w = f"v{rng.randint(0, 3)}={rng.randint(0, 999)}"
            elif r < 0.10:
                w = f"[S_{rng.randint(0, 199)}]"
            elif r < 0.20:
                w = rng.choice(words) + rng.choice(pieces)
            else:
                w = rng.choice(words)
            if rng.random() < 0.25:
                w = w.capitalize()
            ws.append(w)
        caps.append(" ".join(ws) + rng.choice([".", "!", "?", ""]))
    return caps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default=os.path.join(REPO, "..", "shared", "data", "ml-4m",
                                                       "text_tokenizer_4m_wordpiece_30k.json"))
    ap.add_argument("--out", default=os.path.join(REPO, "tokenizers", "tests", "fixtures", "text_ids.json"))
    ap.add_argument("--captions", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    with open(a.tokenizer, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    tok = Tokenizer.from_file(a.tokenizer)
    texts = CASES + make_captions(tok, a.captions, a.seed)
    cases = []
    for text in texts:
        ids = tok.encode(text).ids
        cases.append({
            "text": text,
            "ids": ids,
            "decoded": tok.decode(ids),
            "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
        })
    # encode_batch must agree with encode (it is what ml-4m uses for chunked metadata).
    assert [e.ids for e in tok.encode_batch(texts)] == [c["ids"] for c in cases]
    out = {
        "generator": "tools/ml4m_reference/make_text_fixture.py",
        "tokenizers_version": tokenizers.__version__,
        "tokenizer_file": os.path.basename(a.tokenizer),
        "tokenizer_sha256": sha256,
        "vocab_size": tok.get_vocab_size(),
        "seed": a.seed,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    # One case per line: reviewable diffs, small file.
    head = json.dumps({k: v for k, v in out.items() if k != "cases"}, ensure_ascii=False, indent=1)
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(head[:-2] + ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")
    print(f"wrote {len(cases)} cases to {a.out} (tokenizers {tokenizers.__version__})")


if __name__ == "__main__":
    main()
