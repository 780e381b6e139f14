"""Questions/s through the whole build: the in-process build against the Beam DirectRunner, same inputs.

    python benchmarks/bench_build.py                           # 400 MedQA-format questions, 8 samples each
    python benchmarks/bench_build.py --questions=2000 --delay_s=0.2 --modes=beam_mp

Sources: synthetic MedQA-format questions (plus a one-question benchmark to decontaminate against); the
teacher is the loopback OpenAI-compatible server of the tests (`tests/data_pipeline/fake_openai.py`) answering
after `--delay_s` per request. Each mode builds into a fresh folder (an empty completion store, so every
sample is requested) and is timed from the call to the written manifest, Beam's start-up included. The
shards of every mode are checked to be byte-identical to the in-process build's.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "data_pipeline")]

import build_config  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402

from data_pipeline.build import run_build  # noqa: E402

MODES = {
    "in_process": None,
    "beam_mp": "--direct_num_workers=2 --direct_running_mode=multi_processing",
    "beam_mt": "--direct_num_workers=2 --direct_running_mode=multi_threading",
}


def write_sources(root: str, n: int) -> None:
    """`n` MedQA-format questions and a one-question benchmark."""
    os.makedirs(f"{root}/medqa", exist_ok=True)
    opts = {"A": "aspirin", "B": "heparin", "C": "warfarin", "D": "alteplase", "E": "nothing"}
    with open(f"{root}/medqa/train.jsonl", "w") as f:
        for i in range(n):
            q = f"Case {i}: a patient of {20 + i % 60} years with finding {i * 7919 % 1000}; which drug now?"
            f.write(json.dumps({"question": q, "options": opts, "answer": opts["A"], "answer_idx": "A"}) + "\n")
    os.makedirs(f"{root}/benchmarks/medqa", exist_ok=True)
    with open(f"{root}/benchmarks/medqa/test.jsonl", "w") as f:
        f.write(json.dumps({"question": "An unrelated benchmark question?", "options": {"A": "x", "B": "y"},
                            "answer": "x", "answer_idx": "A"}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=400)
    p.add_argument("--delay_s", type=float, default=0.05, help="the teacher's latency per request")
    p.add_argument("--modes", default="in_process,beam_mp,beam_mt")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_build-")
    root = os.path.join(tmp, "sources")
    write_sources(root, args.questions)
    rows = []
    with FakeOpenAI(delay_s=args.delay_s) as srv:
        config = build_config.get_config()
        r = config.recipe
        r.sources = {"medqa": r.sources.medqa}
        r.source_root, r.decontamination.benchmark_dir = root, f"{root}/benchmarks"
        for c in r.teachers:
            r.teachers[c].base_url = srv.base_url
        for mode in args.modes.split(","):
            out = os.path.join(tmp, mode)
            t = time.perf_counter()
            if MODES[mode] is None:
                run_build(config, out_dir=out, progress=False, log=lambda s: None)
            else:
                from data_pipeline.beam_build import run_beam_build

                run_beam_build(config, out_dir=out, beam_args=MODES[mode], log_fn=lambda s: None)
            wall = time.perf_counter() - t
            same = filecmp.cmp(*(os.path.join(tmp, m, "medqa", "medqa.array_record-00000-of-00001")
                                 for m in (mode, "in_process")), shallow=False) if "in_process" in args.modes else None
            rows.append((mode, wall, args.questions / wall, same))
    print(f"{args.questions} questions x {r.teachers.text.n} samples ({r.teachers.text.max_n_per_request} per "
          f"request), teacher latency {args.delay_s}s, concurrency {r.concurrency}, {os.cpu_count()} CPUs")
    print(f"{'mode':<12}{'wall s':>9}{'questions/s':>13}  identical shards")
    for mode, wall, qps, same in rows:
        print(f"{mode:<12}{wall:>9.2f}{qps:>13.1f}  {same}")


if __name__ == "__main__":
    main()
