"""Evaluate a checkpoint on the paper's benchmarks.

    python -m octomed_jax.evaluate --checkpoint=WORKDIR/checkpoints/STEP --benchmarks=all --data_dir=DATA --out=OUT

The checkpoint is any step of a training run (a workdir means its latest step), our model folder or a
Hugging Face folder; its run contract supplies the system prompt, instruction, tokenizer and max_pixels, so
questions are prompted as in training. Each benchmark's results are written as soon as it finishes and a
rerun skips it (`octomed_jax.evaluation.suite`).

Defaults are the paper's protocol (`--protocol=paper`, `evaluation.protocol.PAPER`): 5 seeds (0..4), temperature
0.6, top-p 0.95, 8,192 new tokens, at most 10 images per question (the first kept), MedQA scored by a majority
vote of 10 samples per seed; category means are the unweighted means of the reported scores. `--protocol=quick`
is one seed without majority voting. Each sampling flag overrides its protocol value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from absl import app, flags

if TYPE_CHECKING:
    from octomed_jax.evaluation.protocol import Protocol


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags; defined only when run as a program, so importing this module defines none."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("checkpoint", None, "A training step or workdir, our model folder or an HF folder.", **fv)
    flags.DEFINE_string("benchmarks", "all", "Comma list of benchmark names and/or categories, or 'all'.", **fv)
    flags.DEFINE_string("data_dir", "data/benchmarks", "Root of the local benchmark files (evaluation.benchmarks).",
                        **fv)
    flags.DEFINE_string("out", "eval_out", "Output folder.", **fv)
    flags.DEFINE_enum("protocol", "paper", ["paper", "quick"],
                      "paper: the paper's protocol; quick: one seed, no majority vote. The flags below override it.",
                      **fv)
    flags.DEFINE_list("seeds", None, "Seeds; scores are averaged over them (default: the protocol's, 0..4).", **fv)
    flags.DEFINE_integer("n", None, "Samples per question and seed off majority-voted benchmarks (default: 1).", **fv)
    flags.DEFINE_list("majority", None, "benchmark=k: score by a majority of k samples per seed (default: medqa=10; "
                      "'--majority=' for none).", **fv)
    flags.DEFINE_integer("max_images", None, "Images kept per question, the first ones (default: 10; 0: all).", **fv)
    flags.DEFINE_list("majority_k", [], "Also report majority-vote accuracy over the first k responses per question.",
                      **fv)
    flags.DEFINE_float("temperature", None, "Sampling temperature (0: greedy; default: 0.6).", **fv)
    flags.DEFINE_float("top_p", None, "Nucleus mass (default: 0.95).", **fv)
    flags.DEFINE_integer("top_k", None, "Top-k (default: 0, off).", **fv)
    flags.DEFINE_integer("max_new_tokens", None, "Token budget per response (default: 8192).", **fv)
    flags.DEFINE_bool("compare_to_paper", False, "Add a row of the paper's OctoMed-7B scores to the table.", **fv)
    flags.DEFINE_integer("limit", None, "Evaluate only the first N questions of each benchmark.", **fv)
    flags.DEFINE_integer("max_batch", 32, "Rows per compiled sampling call.", **fv)
    flags.DEFINE_string("mesh", "", "Mesh shape, e.g. 'tensor=-1' or 'data=2,tensor=4'; empty: one device.", **fv)
    flags.DEFINE_string("dtype", "", "Compute dtype (e.g. bfloat16); empty keeps the checkpoint's.", **fv)
    flags.DEFINE_string("tokenizer", "", "Tokenizer folder; default: the run contract's.", **fv)


def protocol_from_flags(f: flags.FlagValues) -> Protocol:
    """`--protocol` with every sampling flag that was given put over it.

    Raises:
      ValueError: a bad `--majority` item or sampling value (named).
    """
    from octomed_jax.evaluation.protocol import PROTOCOLS, parse_majority

    base = PROTOCOLS[f.protocol]
    sampling = {k: f[k].value for k in ("temperature", "top_p", "top_k", "max_new_tokens", "n")
                if f[k].value is not None}
    return base.override(
        params=dataclasses.replace(base.params, **sampling),
        seeds=None if f.seeds is None else [int(s) for s in f.seeds],
        majority=None if f.majority is None else parse_majority(f.majority),
        max_images=f.max_images,
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f.checkpoint:
        raise app.UsageError("--checkpoint is required")
    from octomed_jax.evaluation.suite import evaluate_benchmarks

    try:
        evaluate_benchmarks(
            f.checkpoint,
            f.benchmarks,
            f.data_dir,
            f.out,
            protocol=protocol_from_flags(f),
            compare_to_paper=f.compare_to_paper,
            majority_k=[int(k) for k in f.majority_k],
            limit=f.limit,
            max_batch=f.max_batch,
            mesh_spec=f.mesh,
            dtype=f.dtype or None,
            tokenizer_path=f.tokenizer or None,
        )
    except (FileNotFoundError, ValueError) as e:  # a bad path, flag, a damaged checkpoint or contract: named in `e`
        raise SystemExit(f"evaluate: error: {e}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main)
