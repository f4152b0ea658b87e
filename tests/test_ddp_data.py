"""Two CPU processes (gloo, Lightning's ddp_spawn): each rank sees its own part of every epoch,
and validation metrics are reduced across ranks to the single-process value."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import open_dict

from joint_colsr.assembly import build_datamodule, build_system, build_trainer
from joint_colsr.metrics import colorization_psnr

pytestmark = pytest.mark.slow

TINY_DDP = ["debug=tiny", "model.net.width_mult=0.0625", "data.train_samples_per_epoch=16", "data.val_views=6",
            "trainer.limit_train_batches=null", "trainer.limit_val_batches=null", "trainer.max_epochs=2",
            "callbacks=none", "logger=none"]


class RecordIndices(pl.Callback):
    """Writes the sample indices each rank receives, per split and epoch (picklable for spawn)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def _record(self, trainer, split, batch):
        path = Path(self.out_dir) / f"{split}-epoch{trainer.current_epoch}-rank{trainer.global_rank}.json"
        seen = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(seen + batch["index"].tolist()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(trainer, "train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._record(trainer, "val", batch)


def test_ranks_see_distinct_parts_and_validation_is_reduced(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY_DDP)
    with open_dict(cfg):
        cfg.trainer.devices = 2
        cfg.trainer.strategy = "ddp_spawn"
    pl.seed_everything(0)
    dm, system = build_datamodule(cfg), build_system(cfg)
    trainer = build_trainer(cfg, [RecordIndices(str(tmp_path))], [])
    trainer.fit(system, datamodule=dm)

    def seen(split, epoch, rank):
        return json.loads((tmp_path / f"{split}-epoch{epoch}-rank{rank}.json").read_text())

    for epoch in (0, 1):
        train0, train1 = seen("train", epoch, 0), seen("train", epoch, 1)
        assert len(train0) == len(train1) == 8
        assert set(train0).isdisjoint(train1) and set(train0) | set(train1) == set(range(16))
        val0, val1 = seen("val", epoch, 0), seen("val", epoch, 1)
        assert set(val0).isdisjoint(val1) and set(val0) | set(val1) == set(range(12))
    assert seen("train", 0, 0) != seen("train", 1, 0)  # a new shard of a new permutation each epoch

    # val/psnr_gray does not depend on the weights: recompute it here, image by image.
    dm.setup("validate")
    per_image = {}
    for index in range(len(dm.val_set)):
        sample = dm.val_set[index]
        batch = dm.on_after_batch_transfer({k: torch.as_tensor(v)[None] for k, v in sample.items()}, 0)
        per_image[index] = colorization_psnr(batch["l_highres"], torch.zeros_like(batch["ab_target"]), batch["rgb_target"]).item()
    everything = sum(per_image.values()) / len(per_image)
    rank0_only = sum(per_image[i] for i in seen("val", 1, 0)) / len(seen("val", 1, 0))
    logged = trainer.callback_metrics["val/psnr_gray"].item()
    assert logged == pytest.approx(everything, abs=1e-4)  # reduced over both ranks' images ...
    assert abs(rank0_only - everything) > 1e-2  # ... which is not what one rank alone sees
