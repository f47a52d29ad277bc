#!/usr/bin/env python3
"""Writes the Python-made reference files that tessera's shard readers are tested against
(tokenizers/tests/fixtures/shards/):

  python.tar       written by Python's tarfile (PAX format, as webdataset's TarWriter does):
                   a directory entry, .npy members of several dtypes (numpy's np.save), a
                   pickled object array like ml-4m's SAM instances, a 120-character member
                   name and a non-ASCII name (both need pax `path` records), JSON and text.
  python_tar.json  what each sample of python.tar holds (key, suffixes, decoded values).
  t5.npz / t5_compressed.npz   np.savez / np.savez_compressed of ml-4m's t5_caption layout.
  pil_resize.json  Pillow's crop → resize → flip of a small random image for both filters, and
                   torchvision's to_tensor + ImageNet normalisation of the result (in float32).
  tiny.jpg / tiny_jpg.json   a 16x12 JPEG (4:2:0, quality 90) and Pillow's decoded pixels.

Usage: python make_shard_fixture.py [--out tokenizers/tests/fixtures/shards]
Needs numpy and Pillow (any recent version; made with Pillow 13.0, numpy 2.4).
"""
import argparse
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image


def npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_tar(out):
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 8192, size=(2, 4)).astype(np.int16)
    crops = np.array([[0, 1, 5, 5, 0], [1, 0, 4, 6, 1]])  # numpy's default int: int64
    f16 = np.array([[1.5, -2.0, 65504.0]], dtype=">f2")
    mask = np.array([True, False, True])
    sam = np.empty(1, dtype=object)
    sam[0] = {"points": [[1, 2]], "token_ids": [[3] * 16]}
    long_key = "k" * 120
    samples = [
        ("000001", [("tok_rgb.npy", npy_bytes(tok)), ("crop_settings.npy", npy_bytes(crops)), ("caption.json", b'["a dog", "a cat"]')]),
        ("000002", [("npy", npy_bytes(f16))]),
        ("000003", [("mask.npy", npy_bytes(mask)), ("sam.npy", npy_bytes(sam))]),
        (long_key, [("txt", "long name".encode())]),
        ("caf\u00e9", [("txt", "unicode name".encode())]),
    ]
    with tarfile.open(os.path.join(out, "python.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        d.mtime = 0
        tar.addfile(d)
        for key, members in samples:
            for suffix, data in members:
                add(tar, f"{key}.{suffix}", data)
    expected = {
        "keys": [k for k, _ in samples],
        "suffixes": [[s for s, _ in m] for _, m in samples],
        "tok_rgb": {"shape": list(tok.shape), "values": tok.ravel().tolist()},
        "crop_settings": crops.tolist(),
        "f16": [float(x) for x in f16.ravel()],
        "mask": mask.tolist(),
    }
    with open(os.path.join(out, "python_tar.json"), "w") as f:
        json.dump(expected, f, indent=1)


def write_npz(out):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((2, 3, 4)).astype(np.float32)
    mask_valid = np.array([[True, True, False], [True, False, False]])
    np.savez(os.path.join(out, "t5.npz"), emb=emb, mask_valid=mask_valid)
    np.savez_compressed(os.path.join(out, "t5_compressed.npz"), emb=emb, mask_valid=mask_valid)
    with open(os.path.join(out, "t5.json"), "w") as f:
        json.dump({"emb": [float(x) for x in emb.ravel()], "mask_valid": mask_valid.ravel().tolist()}, f)


def write_resize(out):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(5, 7, 3)).astype(np.uint8)  # H=5, W=7
    pil = Image.fromarray(img, "RGB")
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]
    cases = []
    for crop in ([0, 0, 5, 7, 0], [1, 2, 4, 4, 1], [-1, 3, 5, 6, 0], [0, 1, 5, 5, 1]):
        top, left, h, w, flip = crop
        for filt, name in ((Image.BILINEAR, "bilinear"), (Image.BICUBIC, "bicubic")):
            for side in (3, 4, 9):
                # ml-4m: TF.crop (= PIL crop(left, top, left+w, top+h)), img.resize, TF.hflip.
                r = pil.crop((left, top, left + w, top + h)).resize((side, side), resample=filt)
                if flip:
                    r = r.transpose(Image.FLIP_LEFT_RIGHT)
                u8 = np.asarray(r)
                # torchvision to_tensor + normalize, in float32 like torch.
                t = (u8.transpose(2, 0, 1).astype(np.float32) / np.float32(255) - mean) / std
                cases.append({"crop": crop, "filter": name, "side": side, "u8": u8.ravel().tolist(), "chw": [float(x) for x in t.ravel()]})
    with open(os.path.join(out, "pil_resize.json"), "w") as f:
        json.dump({"width": 7, "height": 5, "pixels": img.ravel().tolist(), "cases": cases}, f)


def write_jpeg(out):
    y, x = np.mgrid[0:12, 0:16]
    img = np.stack([x * 15, y * 20, (x + y) * 8], axis=-1).astype(np.uint8)
    Image.fromarray(img, "RGB").save(os.path.join(out, "tiny.jpg"), quality=90)
    dec = np.asarray(Image.open(os.path.join(out, "tiny.jpg")).convert("RGB"))
    with open(os.path.join(out, "tiny_jpg.json"), "w") as f:
        json.dump({"width": 16, "height": 12, "pixels": dec.ravel().tolist()}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "../../tokenizers/tests/fixtures/shards"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    write_tar(a.out)
    write_npz(a.out)
    write_resize(a.out)
    write_jpeg(a.out)


if __name__ == "__main__":
    main()
