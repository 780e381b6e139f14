"""A tiny training config for trainer tests: `--config=tests/training/tiny_config.py --config.data.data_dir=...`."""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.recipe.name = "tiny"
    config.model.update(preset="tiny_vocab", dtype="float32", remat_policy="none")
    config.mesh.update(data=2, fsdp=-1, tensor=2)
    config.data.update(seq_len=192, max_patches=96, epochs=50, rows_per_host=-1)
    config.optim.update(learning_rate=3e-3, warmup_ratio=0.2, eps=1e-6)
    config.train.update(global_batch_rows=8, num_steps=8, log_every=1, loss_chunk=64)
    config.checkpoint.update(every=2, keep=2)
    config.export.update(hf=True, dtype="")
    return config
