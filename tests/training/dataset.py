"""A small built dataset (shards + manifest.json) for trainer tests."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from packed_data_util import mixed_dataset  # noqa: E402


def build(out_dir: str) -> str:
    counts = mixed_dataset(out_dir, n_text=24, n_image=12)  # shards + a manifest of their files
    path = os.path.join(out_dir, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["totals"] = {"traces_kept": sum(counts.values()), "response_tokens": 1000}
    with open(path, "w") as f:
        json.dump(manifest, f)
    return out_dir
