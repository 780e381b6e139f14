"""A built recipe as a TensorFlow Datasets dataset (ArrayRecord files, `dataset_info.json`, a feature spec).

    python -m data_pipeline.tfds_dataset --recipe_dir=data/recipes/full_mix --data_dir=data/tfds

    ds = tfds.data_source("octomed_recipe/full_mix", data_dir="data/tfds", split="medqa")   # no TensorFlow
    trace = AcceptedTrace.from_bytes(ds[0]["trace"])

The builder reads the recipe's shards exactly as training does (`writer.verify_source`: the manifest's files,
sizes and SHA-256) and writes one split per source that has traces. Each example is the trace as the shards hold it
(`trace`: `AcceptedTrace.to_bytes()`, the record our Grain pipeline decodes) beside fields to filter on
without decoding it. The builder config is named after the recipe, so recipes live side by side:
`<data_dir>/octomed_recipe/<recipe>/<version>/`; `tfds.builder_from_directory` reads that folder without
this module. TFDS orders a split's examples by a hash of their keys (`<question key>/<sample index>`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from etils import epath

from data_pipeline.records import AcceptedTrace
from data_pipeline.storage import ManifestError, StorageError
from data_pipeline.writer import MANIFEST, VerifyMode, read_json, verify_source

FEATURES = tfds.features.FeaturesDict(
    {
        "trace": tfds.features.Tensor(shape=(), dtype=np.object_),  # AcceptedTrace.to_bytes()
        "question_key": tfds.features.Text(),
        "sample_index": np.int64,
        "category": tfds.features.Text(),
        "teacher": tfds.features.Text(),
        "format": tfds.features.Text(),
    }
)


class OctomedRecipe(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The accepted traces of one built recipe; one split per source.

    Not in TFDS's registry (importing this module twice, as `python -m` does, would register it twice):
    `tfds.data_source` and `tfds.builder` find the written dataset under `data_dir` from its files.
    """

    VERSION = tfds.core.Version("1.0.0")
    # Nothing is downloaded: no checksums file to look up beside the code (which needs importlib_resources).
    code_path = None
    pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))  # not looked up by module (`python -m`)
    RELEASE_NOTES = {"1.0.0": "AcceptedTrace records (schema_version 1) of a data_pipeline.build output."}

    def __init__(self, *, recipe_dir: str, check: VerifyMode = "sha256", **kwargs: Any):
        """Args:
          recipe_dir: a build's output folder (its `manifest.json` and shards).
          check: how the shards are checked against the manifest (`writer.verify_source`).
          **kwargs: for `tfds.core.GeneratorBasedBuilder` (`data_dir`, ...).
        """
        self.recipe_dir, self.check = recipe_dir, check
        self.manifest = read_json(os.path.join(recipe_dir, MANIFEST), "manifest")
        name = self.manifest["recipe_name"] or "recipe"
        super().__init__(config=tfds.core.BuilderConfig(name=name, description=f"recipe {name!r}"), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__.split("\n")[0],
            features=FEATURES,
            homepage="https://github.com/",
            metadata=tfds.core.MetadataDict(
                recipe_name=self.manifest["recipe_name"],
                seed=self.manifest["seed"],
                mixture=self.manifest.get("mixture", {}),
            ),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
        del dl_manager  # everything is local
        files = self.manifest["files"]
        # TFDS cannot write an empty split: a source without traces gets none.
        return {s: self._generate_examples(s) for s in sorted(files) if any(f["records"] for f in files[s])}

    def _generate_examples(self, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        files = verify_source(self.recipe_dir, source, self.check)
        records = ArrayRecordDataSource([f.path for f in files if f.records])
        for i in range(len(records)):
            data = records[i]
            t = AcceptedTrace.from_bytes(data)
            yield f"{t.question.key}/{t.sample_index}", {
                "trace": data,
                "question_key": t.question.key,
                "sample_index": t.sample_index,
                "category": t.question.category,
                "teacher": t.teacher,
                "format": t.format,
            }


def prepare(recipe_dir: str, data_dir: str, *, check: VerifyMode = "sha256") -> OctomedRecipe:
    """Writes the TFDS dataset of a built recipe under `data_dir` (ArrayRecord files) and returns its builder.

    Raises:
      ManifestError: the recipe folder has no manifest, or its shards disagree with it (named).
    """
    builder = OctomedRecipe(recipe_dir=recipe_dir, check=check, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder


def define_flags(flag_values: flags.FlagValues) -> None:
    """The CLI's flags."""
    flags.DEFINE_string("recipe_dir", None, "a build's output folder", flag_values=flag_values, required=True)
    flags.DEFINE_string("data_dir", None, "the TFDS data folder", flag_values=flag_values, required=True)
    flags.DEFINE_enum("check", "sha256", ["sha256", "size"], "how shards are checked", flag_values=flag_values)


def main(argv: Sequence[str]) -> None:
    """`python -m data_pipeline.tfds_dataset --recipe_dir=DIR --data_dir=DIR [--check=size]`.

    Exits (SystemExit) with a message naming the file when the recipe folder is not a finished build.
    """
    f = flags.FlagValues()
    define_flags(f)
    f(list(argv))
    try:
        builder = prepare(f.recipe_dir, f.data_dir, check=f.check)
    except (ManifestError, StorageError) as e:
        sys.exit(f"tfds_dataset: {e}")
    print(f"wrote {builder.data_dir}: " + ", ".join(f"{s} {v.num_examples}" for s, v in builder.info.splits.items()))


if __name__ == "__main__":
    main(sys.argv)
