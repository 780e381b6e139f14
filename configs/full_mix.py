"""The final OctoMed recipe: every source, R1 for text and GPT-4o for images, 16 samples, K=16, no filter.

The paper's final recipe keeps multiple accepted traces per question and does not filter questions
(filters speed early training but unfiltered data reaches the same peak).
"""

from __future__ import annotations

import ml_collections

from configs import base
from configs.base import source
from data_pipeline.labels import label_names
from data_pipeline.sources.classification import CORONAHACK_RELEASE

TEXT_SOURCES = ("medqa", "medmcqa", "headqa")
MM_REASONING_SOURCES = ("pmc_vqa", "slake", "vqa_rad")
CLASSIFICATION_SOURCES = ("aptos", "messidor2", "bcss", "brain_tumor_mri", "coronahack", "mimic_cxr")


def all_sources() -> ml_collections.ConfigDict:
    """Every training source of the paper that has a public adapter."""
    return ml_collections.ConfigDict(
        dict(
            medqa=source("medqa", "medqa"),
            medmcqa=source("medmcqa", "medmcqa"),  # cop counted by the format: json from 1, parquet from 0
            headqa=source("headqa", "headqa"),
            pmc_vqa=source("pmc_vqa", "pmc_vqa"),
            slake=source("slake", "slake"),
            vqa_rad=source("vqa_rad", "vqa_rad"),
            # Classification sets become multiple choice over class names, sampled stratified by class.
            aptos=source(
                "classification_csv",
                "aptos",
                name="aptos",
                image_column="id_code",
                label_column="diagnosis",
                image_dir="train_images",
                image_suffix=".png",
                label_names=label_names("aptos"),  # the table the benchmark registry reads too
            ),
            messidor2=source(
                "classification_csv",
                "messidor2",
                name="messidor2",
                image_column="image_id",
                label_column="adjudicated_dr_grade",
                image_dir="images",
                label_names=label_names("messidor2"),
            ),
            bcss=source("image_folder", "bcss", name="bcss"),
            # The Kaggle archive unpacked: Training/<class>/, Testing/<class>/ (the split picks the folder).
            brain_tumor_mri=source("image_folder", "brain_tumor_mri", name="brain_tumor_mri"),
            # The Kaggle release: one metadata csv marking each row TRAIN / TEST, images in a folder per split.
            coronahack=source("classification_csv", "coronahack", **CORONAHACK_RELEASE),
            # The PhysioNet release folder; frontal images whose study has exactly one positive CheXpert label.
            mimic_cxr=source("mimic_cxr", "mimic-cxr-jpg/2.0.0"),
        )
    )


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    r = config.recipe
    r.name = "full_mix"
    r.sources = all_sources()
    r.traces_per_question = 16
    r.out_dir = "data/recipes/full_mix"
    config.init_from = "checkpoints/Qwen2.5-VL-7B-Instruct"  # the public HF checkpoint, downloaded by the user
    # Scale-out defaults, chosen by `python -m octomed_jax.plan` for v5p:2x2x2 (docs/scale_out.md): the fastest
    # estimated step within 90% of HBM. The flash kernels (`model.attention_impl="auto"`: splash on TPU, the
    # Triton kernel on GPU) and the windowed vision blocks keep no [heads, 8192, 8192] scores, which had forced
    # tensor=4 and nothing_saveable. Now FSDP over every device (no per-layer activation all-reduces) and saving
    # the matmul outputs (`dots_with_no_batch_dims_saveable`: the backward pass reruns no matmul, 25% fewer
    # executed FLOPs than nothing_saveable) fit: one 8192-token row per device per micro-batch, v5p 8 chips
    # 71.4 of 95 GB (TPU compiler). Two rows would add ~23 GB of saved matmul outputs: over 90%. v6e (32 GB)
    # needs --config.model.remat_policy=nothing_saveable (the saved outputs alone are ~23 GB per row).
    config.model.remat_policy = "dots_with_no_batch_dims_saveable"
    config.data.rows_per_host = -1
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    return config
