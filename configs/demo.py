"""The demo: the whole recipe in miniature on a laptop CPU, nothing to download.

    python -m octomed_demo
    python -m octomed_demo --config.recipe.traces_per_question=1 --workdir=runs/demo_k1
    # the stages one by one, like any recipe:
    python -m data_pipeline.build --config=demo --out=runs/demo/data
    python -m octomed_jax.train --config=demo --config.data.data_dir=runs/demo/data

Recipe: the synthetic world of `octomed_demo.world` (text, image classification and image + text
questions), its synthetic teacher (8 samples per question, wrong about a third of the time), rejection
sampling, K accepted traces per question. Training: a tiny Qwen2.5-VL-shaped student from random
initialisation, through the same tokenizer, template, packing, sharded step, checkpoints, in-process eval
and HF export as `full_mix`. The world's adapter and teacher are not in the production registries: the
`octomed_demo` plugin registers them (`config.plugins`). `python -m octomed_demo` runs its driver, which
builds the data when it is missing, evaluates before and after training and writes a report.

The training length is fixed in steps (not epochs), so runs with different K compare at equal compute,
as the paper's "4 traces x 1 epoch vs 1 trace x 3 epochs" does.
"""

from __future__ import annotations

import ml_collections

from configs import base
from configs.base import source

# The world's options for the experiments (`octomed_demo.world`), listed so that `--config` can set them: the
# demo's own world asks one-step text questions (scored_findings=0) and no image + text question states its answer.
_WORLD_OPTIONS = {"text": {"scored_findings": 0}, "mm_reasoning": {"stated_fraction": 0.0}}


def demo_sources(num_train: int, num_test: int) -> ml_collections.ConfigDict:
    """One generated source per category; `path` "." is not read (the questions are generated)."""
    return ml_collections.ConfigDict(
        {
            f"demo_{category}": source(
                "demo_world", ".", category=category, name=f"demo_{category}", num_train=num_train, num_test=num_test,
                **_WORLD_OPTIONS.get(category, {}),
            )
            for category in base.CATEGORIES
        }
    )


def get_config() -> ml_collections.ConfigDict:
    from octomed_demo.vocabulary import TOKENIZER_DIR
    from octomed_demo.world import teacher_settings

    config = base.get_config()
    config.plugins = ("octomed_demo",)
    r = config.recipe
    r.name = "demo"
    r.seed = 0
    r.source_root = "."
    r.sources = demo_sources(num_train=320, num_test=40)
    teacher = ml_collections.ConfigDict(teacher_settings(error_rate=0.35, truncation_rate=0.05, seed=0, n=8))
    r.teachers = ml_collections.ConfigDict({c: teacher for c in base.CATEGORIES})
    r.traces_per_question = 4
    # The world's splits are disjoint by construction (tested); templated stems would share 16-grams.
    r.decontamination.enabled = False
    r.concurrency = 4
    r.out_dir = ""  # "" -> <workdir>/data, so runs with other recipe fields never share shards
    r.images.max_pixels = 56 * 56  # the world's images stay 56x56: 16 patches, 4 vision tokens

    config.model.update(preset="demo", dtype="float32", param_dtype="float32", scan_layers=True, remat_policy="none")
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    # The world's own compact tokenizer (`octomed_demo.vocabulary`, ~600 tokens): with Qwen's 151,936-token
    # vocabulary the output head took ~80% of a CPU step. Rows stay long: shorter rows pay the per-step part
    # (optimizer, dispatch) for fewer examples.
    config.data.tokenizer_path = TOKENIZER_DIR
    # max_patches: a 512-token row holds ~4.5 examples, at most 5 images of 16 patches (80; 49 on average), so
    # 128 never binds and the vision tower does not encode 400 padding patches a row (~10% of a step).
    # cache_examples: ~3 epochs in 400 steps; each example is decoded (PNG, template, tokens) once, not per epoch.
    config.data.update(seq_len=512, max_patches=128, rows_per_host=4, epochs=1000, seed=0, num_workers=0,
                       cache_examples=True)
    config.optim.update(learning_rate=5e-3, warmup_ratio=0.05, final_lr_ratio=0.05, weight_decay=0.0, eps=1e-8)
    # log_every=1: the report's loss curve and token count come from metrics.jsonl, across restarts too.
    # 400 steps (~8,000 examples). Measured with eval every 100 steps (seeds 0 and 1, 2026-11-30): the image
    # classes are read by step 100-200, image + text by 200-300, text by 200 (seed 1) or 300-400 (seed 0: the
    # student copies the key finding from the question late, after a plateau at one answer).
    config.train.update(global_batch_rows=4, num_steps=400, loss_chunk=160, max_loss_tokens=160, log_every=1)
    # A killed demo resumes from the last 50 steps; its epochs are short (a few steps), so no save at each end.
    config.checkpoint.update(every=50, keep=1, async_save=False, at_epoch_ends=False)
    # The teacher's answers are at most ~40 tokens; an untrained student writes until max_new_tokens.
    # 40 questions per category in one sampling call each (max_batch 64): one compile per program, not two.
    config.eval.update(every=0, at_start=True, max_questions=40, max_new_tokens=48, temperature=0.0, top_p=1.0,
                       max_batch=64)
    config.export.update(hf=True, dtype="float32")
    config.demo = ml_collections.ConfigDict(
        dict(
            init="transformers",  # random student saved as an HF folder, loaded via init_from (driver.init_student)
            hf_check=True,  # reload the export with transformers and answer one held-out question
            report="demo_report",  # <workdir>/demo_report.{json,png}
        )
    )
    return config
