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
    # Scale-out defaults, checked by `python -m octomed_jax.plan` (docs/scale_out.md). The attention of 8192-token
    # rows dominates memory (the XLA path keeps [heads, 8192, 8192] fp32 scores), so: save only each layer's input,
    # one row per batch shard per micro-batch, and 4-way tensor parallelism (heads split 7/1/4 per device for
    # text q/kv and vision) with FSDP over the rest. 7B per device, measured before the loss scanned the sequence
    # axis (not re-measured since): v5p 8 chips 40 GB, 64 chips 18 GB of 95 GB; v6e 16 chips 27 of 32 GB (TPU
    # compiler); 8 x H100 ~35 of 80 GB (estimate). tensor=1 then needed 100 GB on a 64-chip v5p, because that
    # loss flattened the micro-batch's tokens and every device held all of them; the loss now keeps each device
    # to its own rows (training/loss.py), so re-run the plan before choosing tensor=1.
    config.model.remat_policy = "nothing_saveable"
    config.data.rows_per_host = -1
    config.mesh.update(data=1, fsdp=-1, tensor=4)
    return config
