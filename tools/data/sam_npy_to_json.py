#!/usr/bin/env python3
"""Converts ml-4m's pickled SAM-instance `.npy` files (object arrays of per-crop dicts) to JSON,
which tessera's shard readers can decode (they refuse pickled object arrays).

Each crop's dict keeps its keys; numpy arrays become nested lists. Works on single files or
on whole tar shards (every `<key>.npy` member becomes `<key>.json`, other members are copied):

  python sam_npy_to_json.py in.npy out.json
  python sam_npy_to_json.py root/sam_instance/shard-00000.tar root/sam_instance_json/shard-00000.tar

Only run it on files you trust: loading them unpickles Python objects (allow_pickle=True).
Needs numpy.
"""
import io
import json
import os
import sys
import tarfile

import numpy as np


def to_jsonable(x):
    if isinstance(x, np.ndarray):
        return [to_jsonable(v) for v in x] if x.dtype == object else x.tolist()
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def convert_bytes(data):
    return json.dumps(to_jsonable(np.load(io.BytesIO(data), allow_pickle=True))).encode()


def convert_tar(src, dst):
    tmp = dst + ".tmp"
    with tarfile.open(src) as tin, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            if not m.isfile():
                continue
            data = tin.extractfile(m).read()
            name = m.name
            if name.endswith(".npy"):
                data, name = convert_bytes(data), name[: -len(".npy")] + ".json"
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), m.mtime, m.mode
            tout.addfile(info, io.BytesIO(data))
    os.replace(tmp, dst)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    if src.endswith(".tar"):
        convert_tar(src, dst)
    else:
        with open(src, "rb") as f:
            out = convert_bytes(f.read())
        with open(dst, "wb") as f:
            f.write(out)


if __name__ == "__main__":
    main()
