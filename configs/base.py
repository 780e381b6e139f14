"""Shared defaults of every recipe: teachers, filters (all off), decontamination, output.

A recipe lives under `config.recipe` so that training settings can be siblings of it in the same file
(`--config=full_mix` means one recipe at both stages). Ablations import `full_mix` and change a few
fields. Thresholds and figures are the paper's as reported (docs/paper.md, "Recipe levers" to "Decontamination").
"""

from __future__ import annotations

import ml_collections

CATEGORIES = ("text", "mm_reasoning", "mm_classification")

COT_SYSTEM_PROMPT = (
    "You are a medical expert. Think through the question step by step, then give your final answer "
    "on the last line as `The answer is \\boxed{X}`, where X is the letter of the chosen option."
)


def source(
    adapter: str, path: str, *, split: str = "train", weight: float = 1.0, max_questions: int = 0, **options
) -> ml_collections.ConfigDict:
    """One source entry: a registered adapter, a path (relative to `recipe.source_root`), its options.

    `max_questions` 0 means all; otherwise a seeded subset (the same questions for every recipe with
    that seed). `weight` is the training-time mixture weight, recorded in the manifest.
    """
    return ml_collections.ConfigDict(
        dict(
            adapter=adapter,
            path=path,
            split=split,
            weight=weight,
            max_questions=max_questions,
            options=ml_collections.ConfigDict(options),
        )
    )


def deepseek_r1() -> ml_collections.ConfigDict:
    """DeepSeek-R1 through DeepSeek's API (reasoning in `reasoning_content`)."""
    return ml_collections.ConfigDict(
        dict(
            kind="openai",
            name="deepseek-r1",
            base_url="https://api.deepseek.com/v1",
            model="deepseek-reasoner",
            api_key_env="DEEPSEEK_API_KEY",
            prompt_version="r1-v1",
            system_prompt="",  # R1 is advised against system prompts
            n=16,
            max_n_per_request=1,  # the API returns one choice per request
            temperature=0.6,
            top_p=0.95,
            max_tokens=8192,
            price_input_per_1m=0.55,
            price_output_per_1m=2.19,
        )
    )


def gpt_4o() -> ml_collections.ConfigDict:
    """GPT-4o through OpenAI's API, prompted for step-by-step reasoning."""
    return ml_collections.ConfigDict(
        dict(
            kind="openai",
            name="gpt-4o",
            base_url="https://api.openai.com/v1",
            model="gpt-4o-2024-08-06",
            api_key_env="OPENAI_API_KEY",
            prompt_version="gpt4o-cot-v1",
            system_prompt=COT_SYSTEM_PROMPT,
            n=16,
            max_n_per_request=16,
            temperature=0.6,
            top_p=0.95,
            max_tokens=4096,
            price_input_per_1m=2.50,
            price_output_per_1m=10.00,
        )
    )


def student_endpoint() -> ml_collections.ConfigDict:
    """The student (Qwen2.5-VL-7B-Instruct) served by an OpenAI-compatible server, e.g. vLLM or ours."""
    cfg = gpt_4o()  # same sampling settings as the multimodal teacher; a local, free, keyless endpoint
    cfg.update(
        name="student-qwen2.5-vl-7b",
        base_url="http://127.0.0.1:8000/v1",
        model="Qwen/Qwen2.5-VL-7B-Instruct",
        api_key_env="",
        prompt_version="student-v1",
        price_input_per_1m=0.0,
        price_output_per_1m=0.0,
    )
    return cfg


def judge_endpoint() -> ml_collections.ConfigDict:
    """The LLM judge that rates question difficulty 1..10."""
    cfg = gpt_4o()
    cfg.name = "judge-gpt-4o"
    cfg.prompt_version = "judge-v1"
    cfg.system_prompt = ""  # filters.JUDGE_SYSTEM_PROMPT is used when empty
    cfg.n = 1
    cfg.temperature = 0.0
    cfg.max_tokens = 512
    return cfg


def get_config() -> ml_collections.ConfigDict:
    """Defaults shared by all recipes; no sources (full_mix adds them)."""
    config = ml_collections.ConfigDict()
    # Modules whose register() adds source adapters or teacher kinds this config uses (data_pipeline.plugins);
    # the production registries need none.
    config.plugins = ()
    config.recipe = r = ml_collections.ConfigDict()
    r.name = "base"
    r.seed = 0
    # Source paths are relative to this folder (overridden by --source_root); nothing is downloaded.
    r.source_root = "data/sources"
    r.sources = ml_collections.ConfigDict()
    # Teacher per category: R1 for text (better on every text task), GPT-4o for images.
    r.teachers = ml_collections.ConfigDict(dict(text=deepseek_r1(), mm_reasoning=gpt_4o(), mm_classification=gpt_4o()))
    r.traces_per_question = 16  # K: accepted traces kept per question, of n sampled
    # A seeded sample of `questions` from the whole pool (0 = all), proportional by source; classification
    # sources stratified by class (also under a source's max_questions cap). data_pipeline/subset.py.
    r.subset = ml_collections.ConfigDict(dict(questions=0, stratify_classes=True))
    r.response_format = ml_collections.ConfigDict({c: "cot" for c in CATEGORIES})
    r.filters = ml_collections.ConfigDict(
        dict(
            teacher_pass_rate=dict(enabled=False, lo=2, hi=14),
            student_pass_rate=dict(enabled=False, lo=2, hi=14, n=16, endpoint=student_endpoint()),
            judge=dict(enabled=False, lo=3, hi=6, n=1, endpoint=judge_endpoint()),
        )
    )
    # Decontamination against the evaluation registry (data_pipeline/benchmarks.py: the sets `evaluate` scores),
    # read from benchmark_dir (relative to the working directory, like `evaluate --data_dir`). The paper's
    # method (docs/paper.md, "Decontamination"): a question sharing a 16-gram with a benchmark question, or an
    # image with the same pixels (a superset of the paper's same bytes), is dropped. A missing benchmark folder
    # is a one-line warning and `checked: false` in the manifest, or fails the build with require_all_benchmarks.
    r.decontamination = ml_collections.ConfigDict(
        dict(
            enabled=True,
            benchmarks="all",  # registry names or categories, comma-separated (data_pipeline.benchmarks.select)
            benchmark_dir="data/benchmarks",
            require_all_benchmarks=False,
            ngram=16,
            image_exact=True,
            image_hamming=-1,  # extra beyond the paper: dHash bits for near-copies of benchmark images; -1: off
            dedup_exact=True,  # exact copies across training sources (same text, option set and images)
            near_jaccard=0.0,  # extra beyond the paper: near-duplicate questions within training; 0: off
        )
    )
    r.images = ml_collections.ConfigDict(
        dict(
            max_source_pixels=50_000_000,  # decompression-bomb guard when reading sources
            max_pixels=262_144,  # training-time smart resize (512x512), recorded for the trainer
            max_tiles=12,  # InternVL only: most 448-px tiles per image, the thumbnail not counted (its processor's)
        )
    )
    r.concurrency = 32  # teacher requests in flight
    r.max_rounds = 3  # re-asks when an endpoint returns fewer samples than requested
    r.store = ""  # completion store; "" -> <out>/completions[-i-of-n].sqlite
    r.files_per_source = 1  # ArrayRecord files per source per build job
    r.out_dir = "data/recipes/base"
    add_training_defaults(config)
    return config


# Logical axis -> mesh axes (`data`, `fsdp`, `tensor`): FSDP over the embedding dimension, tensor
# parallelism over heads / MLP / vocabulary, the batch over both data-parallel axes. Written out here
# (configs stay importable without JAX); equal to `octomed_jax.sharding.DEFAULT_RULES` (tested).
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("patch", None),
    ("norm", None),
    ("layers", None),
)


def add_training_defaults(config: ml_collections.ConfigDict) -> None:
    """The training half of a config: the paper's SFT hyperparameters as defaults (docs/paper.md, same heading).

    LR 5e-5, cosine schedule, warmup ratio 0.1, effective batch 512 examples, 3 epochs. With packing, a
    row of 8192 tokens holds about 8 OctoMed examples (mean ~1,000 tokens), so 64 rows ~ 512 examples.
    Optimizer betas, weight decay and precision are not disclosed; these are LLaMA-Factory's defaults
    with bf16 compute and fp32 master weights.
    """
    config.init_from = ""  # a Hugging Face Qwen2.5-VL folder; "" = random initialisation
    config.model = ml_collections.ConfigDict(
        # family: `qwen2_5_vl` or `qwen3_vl`; the preset must be one of the family's (models/config.py PRESETS)
        dict(family="qwen2_5_vl", preset="7b", dtype="bfloat16", param_dtype="float32", scan_layers=True,
             remat_policy="nothing_saveable",
             # "auto": splash on TPU, Pallas flash with segment ids on GPU, XLA on CPU (models/attention.py);
             # attention_block_*: the flash kernels' tiles (forward and backward), multiples of 128
             attention_impl="auto", attention_block_q=512, attention_block_kv=512)
    )
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: the remaining devices
    config.rules = [list(r) for r in SHARDING_RULES]
    config.data = ml_collections.ConfigDict(
        dict(
            data_dir="",  # "" -> recipe.out_dir
            # name -> weight = copies of each trace per epoch (0.5: a seeded half); empty: every built source at
            # its recipe weight (manifest `mixture`)
            sources=ml_collections.ConfigDict(),
            seq_len=8192,
            max_patches=8192,  # vision patches per packed row (a 512x512 image is ~1,300)
            rows_per_host=-1,  # per micro-batch; -1: one per batch-parallel device of the host
            num_shards=-1,  # fixed data shards (same batches on any process count); -1: one per process
            epochs=3,
            seed=0,
            packing="best_fit",
            overlong="truncate_reasoning",
            num_workers=0,
            cache_examples=False,  # keep decoded examples in memory across epochs (small datasets only)
            max_errors=1000,
            max_error_fraction=0.01,
            verify_files="sha256",  # shards checked against the manifest at start: "sha256" or "size" (cheaper)
            system_prompt="",  # "" -> the template's default: Qwen2.5-VL's system prompt; none for Qwen3-VL, InternVL
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=5e-5,
            schedule="cosine",
            warmup_ratio=0.1,
            final_lr_ratio=0.0,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            grad_clip=1.0,
            freeze=[],  # any of "vision", "merger", "language"
        )
    )
    config.train = ml_collections.ConfigDict(
        dict(
            global_batch_rows=64,
            num_steps=-1,  # -1: the configured exact epochs, counted with the real packer (octomed_jax.data.epochs)
            loss_chunk=1024,
            max_loss_tokens=-1,  # per packed row; -1: every position may carry loss
            log_every=10,
            seed=0,
        )
    )
    # at_epoch_ends: also save the step each epoch ends (the 1- and 3-epoch points of the traces ablation).
    config.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=3, async_save=True, at_epoch_ends=True))
    # In-process eval on held-out benchmark subsets (octomed_jax.evaluation registry names, "all", or a
    # category); "" data_dir: none. Greedy by default (the paper's 0.6 / 0.95 x 5 seeds is for `evaluate`).
    config.eval = ml_collections.ConfigDict(
        # at_epoch_ends: also at the step each epoch ends (the traces ablation: after epoch 1 and epoch 3)
        # max_batch: rows per compiled sampling call (each batch size rounded up to a power of two is one compile)
        dict(every=1000, at_start=False, at_epoch_ends=False, data_dir="", benchmarks="all", max_questions=100,
             max_new_tokens=2048, temperature=0.0, top_p=1.0, max_batch=32)
    )
    config.export = ml_collections.ConfigDict(dict(hf=True, dtype="bfloat16"))
