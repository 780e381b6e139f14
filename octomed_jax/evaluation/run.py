"""The evaluation loop as a library: a model, questions and sampling settings in; metrics out.

`evaluate_model` is what `python -m octomed_jax.evaluate` runs per benchmark and what the training loop
calls in process. Prompts go through THE chat template (`messages_for_question` + `encode_chat`), answers
through THE extractor (`data_pipeline.answers.extract_answer`). Questions are encoded chunk by chunk, so
image benchmarks never hold all their pixels in memory.

A question that cannot be prompted (an image `preprocess_image` refuses, text with a control token of the
template) is skipped, not fatal: each benchmark's metrics list it under `skipped_questions` with its id and
reason, and its accuracy is over the questions that were asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax

from data_pipeline.answers import extract_answer
from octomed_jax import sharding as sharding_lib
from octomed_jax.contract import RunContract
from octomed_jax.data.images import ImageError
from octomed_jax.data.template import TemplateError
from octomed_jax.evaluation.metrics import QuestionResult, Response, benchmark_metrics, summarize
from octomed_jax.evaluation.protocol import cap_images
from octomed_jax.generation.prompts import question_prompt
from octomed_jax.generation.sampler import Sampler, SamplingParams

if TYPE_CHECKING:
    from jax.sharding import Mesh
    from transformers import PreTrainedTokenizerFast

    from data_pipeline.records import Question
    from octomed_jax.models.qwen2_5_vl import Qwen25VL


@dataclasses.dataclass(frozen=True)
class SkippedQuestion:
    """A question that was not asked: its prompt could not be built.

    Attributes:
      question_id: the question's id within its benchmark.
      reason: "corrupt_image", "image_too_large", "bad_aspect_ratio" (`ImageError.reason`) or "template_error".
      message: what went wrong.
    """

    question_id: str
    reason: str
    message: str


@dataclasses.dataclass
class EvalResult:
    """What an evaluation returns.

    Attributes:
      metrics: {"benchmarks": {name: benchmark_metrics + num_skipped, skipped_questions, images_capped},
        "summary": summarize(...)}; a benchmark is a question `source` (e.g. "medqa", "brain_tumor").
      results: per benchmark, the per-question responses of the questions asked.
      skipped: per benchmark, the questions that could not be prompted.
    """

    metrics: dict[str, Any]
    results: dict[str, list[QuestionResult]]
    skipped: dict[str, list[SkippedQuestion]] = dataclasses.field(default_factory=dict)


def _prompt(tokenizer: PreTrainedTokenizerFast, question: Question, contract: RunContract) -> Any:
    """The question's prompt as the run's contract builds it (`question_prompt`)."""
    prompting = contract.prompting
    return question_prompt(
        tokenizer, question, system_prompt=prompting.system_prompt, instruction=prompting.instruction,
        template=prompting.template,
        **contract.preprocessing.image_options(contract.model),  # the bounds and the family's parameters
    )


def split_askable(
    tokenizer: PreTrainedTokenizerFast, questions: Sequence[Question], contract: RunContract
) -> tuple[list[Question], list[SkippedQuestion]]:
    """The questions whose prompt can be built, and the others with why (one prompt built at a time).

    Returns:
      (askable questions in order, skipped questions in order).
    """
    askable, skipped = [], []
    for q in questions:
        try:
            _prompt(tokenizer, q, contract)
        except ImageError as e:
            skipped.append(SkippedQuestion(q.id, e.reason, str(e)))
        except TemplateError as e:
            skipped.append(SkippedQuestion(q.id, "template_error", str(e)))
        else:
            askable.append(q)
    return askable, skipped


def generate_responses(
    sampler: Sampler,
    tokenizer: PreTrainedTokenizerFast,
    questions: Sequence[Question],
    params: SamplingParams,
    *,
    contract: RunContract,
    seeds: Sequence[int] = (0,),
    chunk_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[QuestionResult]:
    """Samples `params.n` responses per question and seed and parses their answers.

    Seed s samples question i with the key fold_in(PRNGKey(s), i) (its samples j fold in j), so a
    question's responses depend on the seed and its index, not on batching.

    Args:
      sampler: the sampler over the model.
      tokenizer: the Qwen tokenizer (encodes prompts, decodes responses).
      questions: the questions, each one that can be prompted (`split_askable`).
      params: sampling settings (`n` samples per question and seed).
      contract: the run the model comes from: its prompting (system prompt, instruction) and preprocessing.
      seeds: one pass over the questions per seed.
      chunk_size: questions encoded at a time.
      progress: called with the number of responses finished.

    Returns:
      One `QuestionResult` per question, in order.
    """
    responses: list[list[list[Response]]] = [[] for _ in questions]
    for seed in seeds:
        key = jax.random.PRNGKey(seed)
        for start in range(0, len(questions), chunk_size):
            chunk = questions[start : start + chunk_size]
            prompts = [_prompt(tokenizer, q, contract) for q in chunk]
            outs = sampler.generate(prompts, params, key=key, first_index=start, progress=progress)
            for q_index, (q, completions) in enumerate(zip(chunk, outs, strict=True)):
                texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
                responses[start + q_index].append(
                    [
                        Response(
                            text=t,
                            num_tokens=c.num_tokens,
                            answer=extract_answer(t, q.options),
                            finish_reason=c.finish_reason,
                        )
                        for t, c in zip(texts, completions, strict=True)
                    ]
                )
    return [QuestionResult(q.id, q.answer, r) for q, r in zip(questions, responses, strict=True)]


def evaluate_model(
    model: Qwen25VL,
    questions: Sequence[Question],
    params: SamplingParams,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seeds: Sequence[int] = (0,),
    majority_k: Sequence[int] = (),
    majority: int | None = None,
    max_images: int | None = None,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
    sampler: Sampler | None = None,
    contract: RunContract | None = None,
    max_batch: int = 32,
    progress: bool | Callable[[int], None] = False,
) -> EvalResult:
    """Evaluates `model` on `questions` (any mix of benchmarks, grouped by `question.source`).

    This is the training loop's eval step: pass the live model (sharded over the training `mesh` by
    `rules`) and a fixed list of held-out questions; compiled shapes are cached across calls.

    Args:
      model: the student.
      questions: the questions; their `source` names the benchmark, their `category` its category.
      params: sampling settings (temperature 0 for greedy; `n` samples per seed).
      tokenizer: the tokenizer (default: the contract's, `load_tokenizer(contract.prompting.tokenizer_path)`).
      seeds: seeds to average over.
      majority_k: report majority-vote accuracy over the first k responses of each question.
      majority: score by a majority vote over each seed's first `majority` samples (`params.n` >= it), as the
        paper reports MedQA; None: by accuracy.
      max_images: keep each question's first `max_images` images (the paper: 10); the questions cut are
        counted per benchmark (`images_capped`). None keeps all.
      mesh: the mesh the parameters live on, if sharded.
      rules: logical axis rules of that mesh.
      sampler: reuse a sampler (its model is used; `mesh`, `rules`, `max_batch` are then ignored).
      contract: the run the model comes from (`checkpoint.load_run`, or the trainer's): questions are prompted
        and images preprocessed as it says. None: the defaults for `model.cfg` (Qwen's system prompt, OctoMed's
        max_pixels).
      max_batch: rows per compiled sampling call.
      progress: True for a tqdm bar, or a callback taking the number of responses finished.

    Returns:
      An `EvalResult`.
    """
    if majority is not None and params.n < majority:
        raise ValueError(f"a majority of {majority} needs n >= {majority} samples per question, got n={params.n}")
    if contract is None:
        contract = RunContract.for_model(model.cfg)
    if tokenizer is None:
        from octomed_jax.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(contract.prompting.tokenizer_path, special_ids=contract.special_ids)
    if sampler is None:
        sampler = Sampler(model, mesh=mesh, rules=rules, max_batch=max_batch,
                          stop_token_ids=contract.special_ids.stop_ids)
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(q.source, []).append(q)
    categories = {name: qs[0].category for name, qs in groups.items()}
    skipped: dict[str, list[SkippedQuestion]] = {}
    capped: dict[str, list[str]] = {}
    for name in groups:
        groups[name], capped[name] = cap_images(groups[name], max_images)
        groups[name], skipped[name] = split_askable(tokenizer, groups[name], contract)
        for s in skipped[name]:
            print(f"[evaluate] {name}: question {s.question_id!r} skipped ({s.reason}): {s.message}")
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(map(len, groups.values())) * len(seeds) * params.n, desc="eval", unit="resp")
        callback: Callable[[int], None] | None = bar.update
    else:
        callback = progress or None
    try:
        results = {
            name: generate_responses(
                sampler,
                tokenizer,
                qs,
                params,
                contract=contract,
                seeds=seeds,
                progress=callback,
            )
            for name, qs in groups.items()
        }
    finally:
        if bar is not None:
            bar.close()
    per_benchmark = {
        name: {
            **benchmark_metrics(r, majority_k=majority_k, majority=majority),
            "images_capped": len(capped[name]),
            "num_skipped": len(skipped[name]),
            "skipped_questions": [dataclasses.asdict(s) for s in skipped[name]],
        }
        for name, r in results.items()
    }
    return EvalResult(
        metrics={
            "benchmarks": per_benchmark,
            "summary": summarize(per_benchmark, categories),
            "categories": categories,
        },
        results=results,
        skipped=skipped,
    )


__all__ = [
    "EvalResult",
    "SkippedQuestion",
    "evaluate_model",
    "generate_responses",
    "split_askable",
]
