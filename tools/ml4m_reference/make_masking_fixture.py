#!/usr/bin/env python3
"""Masked tensors computed by ml-4m's own UnifiedMasking, for the cases where its output does not
depend on random draws, so tessera's masking can be compared value for value
(tokenizers/tests/masking_ml4m.rs).

Deterministic cases (reference section 3.4):
  * sequence_mask with input budget 0 (everything is target) and any target budget: span masking
    with keep_prob 0, and truncation can only start at [S_1] (np.random.randint(1) == 0);
  * sequence_mask with keep 'all' and an input budget that fits the whole sequence: the input is
    the sequence, the target [S_1] (or nothing with target budget 0);
  * the same for metadata chunk lists (chunk_span_masking, chunk truncation, EOS chunk);
  * sequence_emb_mask_span (t5_caption) with input budget 0 or keep 'all'.
This pins down tokenization + EOS + truncation, sentinel ids, the (max_tokens + 1) * 2 layout,
PAD, the target offset b_in, the masks and the decoder attention mask.

How to run it (once; commit the fixture), with the peer venv that has torch and tokenizers:

  ML4M_DIR=/path/to/ml-4m /work/peervenv/bin/python tools/ml4m_reference/make_masking_fixture.py \
      [--tokenizer ../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json] \
      [--out tokenizers/tests/fixtures/masking_ml4m.json]

ml-4m is imported from ML4M_DIR at run time; nothing of it is copied here.
"""
import argparse
import hashlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEXTS = {
    "caption": [
        "A man riding a horse on the beach.",
        "two dogs, one cat & a HOUSE",
        "",
        " ".join(["photo"] * 300),  # longer than max_tokens: EOS is cut
    ],
    "det": ["v0=12 v1=34 v2=100 v3=200 dining table v0=1 v1=2 v2=3 v3=4 person"],
    "color_palette": ["v1=2 v0=10 v0=20 v0=30 v0=40 v0=50 v0=60", "v1=8 " + " ".join(f"v0={i}" for i in range(24))],
    "sam_instance": ["point v0=3 v1=7 none point v0=100 v1=20 polygon v0=1 v1=2 v2=30 v3=40 v0=5 v1=6"],
}
CHUNKS = {
    "metadata": [
        ["v1=3 v0=12", "v1=0 v0=20", "v1=19 v0=1"],
        [f"v1={k} v0={k}" for k in range(19)],  # 38 tokens + EOS = 39 <= 40
        [f"v1={k} v0={k}" for k in range(20)],  # 40 tokens: the EOS chunk no longer fits
        [f"v1={k % 21} v0={k}" for k in range(21)],  # the 21st pair is dropped too
    ],
}
MAX_TOKENS = {"caption": 256, "det": 256, "color_palette": 23, "sam_instance": 290, "metadata": 40}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default=os.path.join(REPO, "..", "shared", "data", "ml-4m", "text_tokenizer_4m_wordpiece_30k.json"))
    ap.add_argument("--out", default=os.path.join(REPO, "tokenizers", "tests", "fixtures", "masking_ml4m.json"))
    a = ap.parse_args()
    ml4m = os.environ.get("ML4M_DIR")
    if not ml4m:
        sys.exit("set ML4M_DIR to an extracted apple/ml-4m tree")
    sys.path.insert(0, os.path.abspath(ml4m))
    import torch
    from tokenizers import Tokenizer
    from fourm.data.masking import UnifiedMasking

    tok = Tokenizer.from_file(a.tokenizer)
    info = {"caption": {"type": "seq", "min_tokens": 0, "max_tokens": 256, "input_alphas": [1.0], "target_alphas": [1.0]}}
    um = UnifiedMasking(modality_info=info, text_tokenizer=tok, input_tokens_range=256, target_tokens_range=256)

    def dump(d):
        return {
            "tensor": d["tensor"].tolist(),
            "input_mask": d["input_mask"].tolist(),
            "target_mask": d["target_mask"].tolist(),
            "decoder_attention_mask": d["decoder_attention_mask"].tolist(),
        }

    def budgets(max_tokens):
        # (b_in, b_tgt, keep): b_in 0 with several target budgets, and keep 'all' with room.
        out = [(0, t, "random") for t in (0, 1, 3, 10, max_tokens)]
        out += [(max_tokens, t, "all") for t in (0, 1, 5)]
        return out

    cases = []
    for mod, texts in TEXTS.items():
        for text in texts:
            for b_in, b_tgt, keep in budgets(MAX_TOKENS[mod]):
                d = um.sequence_mask(text, MAX_TOKENS[mod], b_in, b_tgt, keep)
                cases.append({"modality": mod, "text": text, "b_in": b_in, "b_tgt": b_tgt, "keep": keep, **dump(d)})
    for mod, lists in CHUNKS.items():
        for chunks in lists:
            for b_in, b_tgt, keep in budgets(MAX_TOKENS[mod]):
                d = um.sequence_mask(list(chunks), MAX_TOKENS[mod], b_in, b_tgt, keep)
                cases.append({"modality": mod, "chunks": chunks, "b_in": b_in, "b_tgt": b_tgt, "keep": keep, **dump(d)})
    # t5_caption: row r holds r + 1 everywhere; the fixture keeps each output row's first value.
    emb_cases = []
    for rows in (5, 77, 90):
        emb = torch.arange(1, rows + 1, dtype=torch.float32)[:, None].repeat(1, 4096)
        for b_in, keep in ((0, "random"), (77, "all")):
            d = um.sequence_emb_mask_span(emb, 77, b_in, 10, keep)
            assert bool((d["tensor"] == d["tensor"][:, :1]).all()), "rows are constant"
            emb_cases.append({"rows": rows, "b_in": b_in, "keep": keep, "row_values": d["tensor"][:, 0].tolist(), **{k: v for k, v in dump(d).items() if k != "tensor"}})

    with open(a.tokenizer, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"tokenizer_sha256": sha, "sequence_cases": cases, "embedding_cases": emb_cases}, f)
        f.write("\n")
    print(f"wrote {len(cases)} sequence and {len(emb_cases)} embedding cases to {a.out}")


if __name__ == "__main__":
    main()
