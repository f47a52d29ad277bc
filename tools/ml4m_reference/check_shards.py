#!/usr/bin/env python3
"""Cross-checks tessera's shard reader against ml-4m's own `multi_tarfile_samples` (executed from
apple/ml-4m's fourm/data/unified_datasets.py source, without importing torch) and webdataset,
and tessera's brace expansion against Python's `braceexpand`.

Usage: ML4M_DIR=/path/to/ml-4m python check_shards.py SHARDS_TOOL [WORK_DIR]
  SHARDS_TOOL: the built example (cargo build -p tessera-tokenizers --example shards_tool).
Needs webdataset and braceexpand (pip install webdataset braceexpand).
Prints one line per check and exits non-zero on the first mismatch.
"""
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import tarfile
import io

import braceexpand
import webdataset as wds


def load_ml4m_functions(ml4m_dir):
    path = os.path.join(ml4m_dir, "fourm/data/unified_datasets.py")
    tree = ast.parse(open(path).read())
    wanted = {"multi_tarfile_samples", "extract_modality_names", "check_dots", "remove_ext_with_gz"}
    module = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], type_ignores=[])
    env = {"wds": wds, "braceexpand": braceexpand, "re": re, "os": os, "warn_and_continue": wds.warn_and_continue,
           "Iterable": object, "Dict": dict, "Any": object, "Callable": object}
    from typing import Any, Callable, Dict, Iterable
    env.update(Iterable=Iterable, Dict=Dict, Any=Any, Callable=Callable)
    exec(compile(module, path, "exec"), env)
    return env


def ml4m_records(env, pattern, name_map):
    # ResampledShards would pick shards at random; iterate the expanded shard list in order.
    urls = list(braceexpand.braceexpand(pattern))
    out = []
    for sample in env["multi_tarfile_samples"]([{"url": u} for u in urls], modality_name_map=name_map):
        key = sample.pop("__key__")
        sample.pop("__url__")
        out.append({"key": key, "members": {k: len(v) for k, v in sample.items()}})
    return out


def tessera_records(tool, pattern, name_map):
    args = [tool, "dump", pattern] + [f"{k}={v}" for k, v in (name_map or {}).items()]
    lines = subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()
    return [json.loads(l) for l in lines]


def check(name, a, b):
    if a != b:
        print(f"MISMATCH {name}:\n  ml-4m/python: {a[:3] if isinstance(a, list) else a}\n  tessera:      {b[:3] if isinstance(b, list) else b}")
        sys.exit(1)
    print(f"ok  {name} ({len(a) if isinstance(a, list) else 1} items)")


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main():
    tool = sys.argv[1]
    work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp()
    env = load_ml4m_functions(os.environ["ML4M_DIR"])

    # 1. A fixture written by tessera, read by ml-4m's join and by tessera's.
    root = os.path.join(work, "fixture")
    pattern = subprocess.run([tool, "fixture", root, "3", "4", "1"], check=True, capture_output=True, text=True).stdout.strip()
    for name_map in (None, {"tok_rgb": "tok_rgb@224"}):
        check(f"fixture join, name_map={name_map}", ml4m_records(env, pattern, name_map), tessera_records(tool, pattern, name_map))

    # 2. Tars written by Python: named members, a two-modality tar, upper-case suffixes,
    #    directories in member names, a folder without brackets.
    py = os.path.join(work, "py")
    layouts = {
        "named": [("a/k1.det.json", b"{}"), ("a/k2.det.json", b"{}")],
        "multi": [("a/k1.caption.TXT", b"x"), ("a/k1.metadata.json", b"{}"), ("a/k2.caption.TXT", b"yy"), ("a/k2.metadata.json", b"{}")],
        "plain": [("a/k1.npy", b"123"), ("a/k2.npy", b"4567")],
    }
    for folder, members in layouts.items():
        os.makedirs(os.path.join(py, folder), exist_ok=True)
        with tarfile.open(os.path.join(py, folder, "s-0.tar"), "w", format=tarfile.PAX_FORMAT) as t:
            for n, d in members:
                add(t, n, d)
    for pat in (f"{py}/[named,multi,plain]/s-0.tar", f"{py}/[plain]/s-0.tar", f"{py}/plain/s-0.tar"):
        check(f"python tars {os.path.relpath(pat, work)}", ml4m_records(env, pat, {"plain": "tok_x@224"}), tessera_records(tool, pat, {"plain": "tok_x@224"}))

    # 3. The fixture's members load with numpy, Pillow and json (what ml-4m's decoder does).
    import numpy as np
    from PIL import Image
    n = 0
    for url in braceexpand.braceexpand(pattern.replace("[", "{").replace("]", "}")):
        for s in wds.tarfile_samples([{"url": url}]):
            for k, v in s.items():
                if k.endswith("npy"):
                    a = np.load(io.BytesIO(v))
                    ok = (a.dtype == np.int16 and a.shape == (2, 196)) if "tok_rgb" in url else (a.dtype == np.int64 and a.shape == (2, 5))
                elif k.endswith("png"):
                    ok = Image.open(io.BytesIO(v)).convert("RGB").size == (40, 32)
                elif k.endswith("json"):
                    ok = json.loads(v) is not None
                else:
                    ok = k.startswith("__")
                if not ok:
                    print(f"MISMATCH python cannot load {url} {s['__key__']} {k}")
                    sys.exit(1)
                n += 1
    print(f"ok  fixture members load in numpy/Pillow/json ({n} items)")

    # 4. Brace expansion.
    for pat in ("s-{00000..00011}.tar", "{a,b}{1..3}", "x{0..10..3}y", "{10..7}", "{a,{b,c}d}e", "{-2..2}", "{08..11}", "{a..e..2}"):
        want = list(braceexpand.braceexpand(pat))
        got = subprocess.run([tool, "expand", pat], check=True, capture_output=True, text=True).stdout.splitlines()
        check(f"braceexpand {pat}", want, got)


if __name__ == "__main__":
    main()
