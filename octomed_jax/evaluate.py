"""Evaluate a checkpoint on the paper's benchmarks.

    python -m octomed_jax.evaluate --checkpoint=WORKDIR/checkpoints/STEP --benchmarks=all --data_dir=DATA --out=OUT

The checkpoint is any step of a training run (a workdir means its latest step), our model folder or a
Hugging Face folder; its run contract supplies the system prompt, instruction, tokenizer and max_pixels, so
questions are prompted as in training. Each benchmark's results are written as soon as it finishes and a
rerun skips it (`octomed_jax.evaluation.suite`). Defaults follow the paper's protocol except the seed count.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags; defined only when run as a program, so importing this module defines none."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("checkpoint", None, "A training step or workdir, our model folder or an HF folder.", **fv)
    flags.DEFINE_string("benchmarks", "all", "Comma list of benchmark names and/or categories, or 'all'.", **fv)
    flags.DEFINE_string("data_dir", "data/benchmarks", "Root of the local benchmark files (evaluation.benchmarks).",
                        **fv)
    flags.DEFINE_string("out", "eval_out", "Output folder.", **fv)
    flags.DEFINE_list("seeds", ["0"], "Seeds; accuracy is averaged over them (the paper uses 5).", **fv)
    flags.DEFINE_integer("n", 1, "Samples per question and seed.", **fv)
    flags.DEFINE_list("majority_k", [], "Report majority-vote accuracy over the first k responses per question.", **fv)
    flags.DEFINE_float("temperature", 0.6, "Sampling temperature (0: greedy).", **fv)
    flags.DEFINE_float("top_p", 0.95, "Nucleus mass.", **fv)
    flags.DEFINE_integer("top_k", 0, "Top-k (0: off).", **fv)
    flags.DEFINE_integer("max_new_tokens", 8192, "Token budget per response.", **fv)
    flags.DEFINE_integer("limit", None, "Evaluate only the first N questions of each benchmark.", **fv)
    flags.DEFINE_integer("max_batch", 32, "Rows per compiled sampling call.", **fv)
    flags.DEFINE_string("mesh", "", "Mesh shape, e.g. 'tensor=-1' or 'data=2,tensor=4'; empty: one device.", **fv)
    flags.DEFINE_string("dtype", "", "Compute dtype (e.g. bfloat16); empty keeps the checkpoint's.", **fv)
    flags.DEFINE_string("tokenizer", "", "Tokenizer folder; default: the run contract's.", **fv)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f.checkpoint:
        raise app.UsageError("--checkpoint is required")
    from octomed_jax.evaluation.suite import evaluate_benchmarks
    from octomed_jax.generation.sampler import SamplingParams

    params = SamplingParams(
        temperature=f.temperature, top_p=f.top_p, top_k=f.top_k, max_new_tokens=f.max_new_tokens, n=f.n
    ).validate()
    try:
        evaluate_benchmarks(
            f.checkpoint,
            f.benchmarks,
            f.data_dir,
            f.out,
            params,
            seeds=[int(s) for s in f.seeds],
            majority_k=[int(k) for k in f.majority_k],
            limit=f.limit,
            max_batch=f.max_batch,
            mesh_spec=f.mesh,
            dtype=f.dtype or None,
            tokenizer_path=f.tokenizer or None,
        )
    except (FileNotFoundError, ValueError) as e:  # a bad path, a damaged checkpoint or contract: named in `e`
        raise SystemExit(f"evaluate: error: {e}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main)
