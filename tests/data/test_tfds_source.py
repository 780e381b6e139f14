"""Training reads a TFDS dataset of a build (`python -m data_pipeline.tfds_dataset`) as it reads the build's
shards: the recipe's weights from the dataset's metadata, the same packed batches; a short training run on it;
its files are checked against `dataset_info.json` and key the counting pass's cache."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "training"))
import dataset  # noqa: E402
import tiny_config  # noqa: E402
from packed_data_util import MODEL_CFG, data_config  # noqa: E402

from data_pipeline.storage import ManifestError  # noqa: E402
from data_pipeline.tfds_dataset import prepare  # noqa: E402
from octomed_jax import sharding  # noqa: E402
from octomed_jax.data.epochs import CACHE_DIR, count_plan  # noqa: E402
from octomed_jax.data.pipeline import TfdsSource, built_sources, data_format, make_iterator  # noqa: E402
from octomed_jax.training.trainer import run_contract, train  # noqa: E402

WEIGHTS = {"image_src": 0.5, "text_src": 1.5}  # fractional: seeded subsets, which depend on the records' order


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(the build's folder, its TFDS dataset folder), the recipe weighing its sources `WEIGHTS`."""
    shards = dataset.build(str(tmp_path_factory.mktemp("shards")))
    path = os.path.join(shards, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    for source, weight in WEIGHTS.items():
        manifest["mixture"]["sources"][source]["weight"] = weight
    with open(path, "w") as f:
        json.dump(manifest, f)
    root = str(tmp_path_factory.mktemp("tfds"))
    return shards, os.fspath(prepare(shards, root).data_dir)


def test_the_tfds_folder_gives_the_shards_batches(folders):
    shards, tfds_dir = folders
    assert (data_format(shards), data_format(tfds_dir)) == ("shards", "tfds")
    assert built_sources(tfds_dir) == built_sources(shards) == WEIGHTS
    split = TfdsSource(tfds_dir, "image_src")
    traces = tfds.builder_from_directory(tfds_dir).as_data_source()["image_src"]
    assert sorted(split[i] for i in range(12)) == sorted(traces[j]["trace"] for j in range(len(traces)))
    want = list(make_iterator(data_config(shards, sources=WEIGHTS), MODEL_CFG, process_index=1, process_count=2))
    got = list(make_iterator(data_config(tfds_dir, sources=WEIGHTS), MODEL_CFG, process_index=1, process_count=2))
    assert len(got) == len(want) >= 5
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_its_files_are_checked_and_the_folder_named(folders):
    _, tfds_dir = folders
    root = os.path.dirname(os.path.dirname(os.path.dirname(tfds_dir)))
    with pytest.raises(ManifestError, match=f"{root}: neither manifest.json .* TFDS datasets below it: .*1.0.0"):
        data_format(root)
    stray = os.path.join(tfds_dir, "octomed_recipe-text_src.array_record-00000-of-00001.tmp")
    open(stray, "wb").close()
    try:
        with pytest.raises(ManifestError, match=f"{stray}: a file of split 'text_src' that .* does not list"):
            make_iterator(data_config(tfds_dir), MODEL_CFG, process_index=0, process_count=1)
    finally:
        os.remove(stray)


@pytest.mark.slow
def test_training_runs_on_it(folders, tmp_path):
    """Two steps of the tiny model, text only (no patch budget) on a data-parallel mesh: its cheapest compile."""
    shards, tfds_dir = folders
    cfg = tiny_config.get_config()
    cfg.mesh.update(data=8, fsdp=1, tensor=1)
    cfg.data.update(data_dir=tfds_dir, max_patches=0)  # sources: the recipe's, from the TFDS metadata
    cfg.train.num_steps = 2
    cfg.export.hf = False
    train(cfg, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    with open(tmp_path / "run" / "data_plan.json") as f:
        mixture = json.load(f)["mixture"]
    assert {s: m["weight"] for s, m in mixture["sources"].items()} == WEIGHTS
    assert mixture["sources"]["text_src"]["examples"] == 24 * 1.5 * 50  # records x weight x epochs
    assert mixture["sources"]["image_src"]["skipped_per_epoch"] == {"too_many_patches": 12}
    cfg.data.data_dir = shards
    assert run_contract(cfg, sharding.make_mesh(dict(cfg.mesh)), str(tmp_path / "count"))[1].mixture == mixture


def test_the_counting_cache_is_keyed_by_the_tfds_files(folders, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(folders[1], copy, ignore=shutil.ignore_patterns(CACHE_DIR))  # modification times kept
    cfg = data_config(copy, sources=WEIGHTS)
    kw = dict(num_shards=1, rows_per_micro_batch=2, micro_steps=1, progress=False)
    first = count_plan(cfg, MODEL_CFG, **kw)
    text = os.path.join(copy, "octomed_recipe-text_src.array_record-00000-of-00001")
    st = os.stat(text)
    os.utime(text, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # another version of the file, for all the cache knows
    assert count_plan(cfg, MODEL_CFG, **kw).steps == first.steps
    cached = sorted(f.split("-")[1] for f in os.listdir(os.path.join(copy, CACHE_DIR)) if f.startswith("lengths-"))
    assert cached == ["image_src", "text_src", "text_src"]  # only the changed split counted again
