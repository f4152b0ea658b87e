"""The supervised LightningModule: any network mapping low-res L* to high-res a*b*, trained with MSE."""

from __future__ import annotations

from typing import Any, Mapping

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics import MeanMetric

from joint_colsr.metrics import colorization_psnr


def _plain(cfg: Any) -> Any:
    """DictConfig -> plain dict/list (what goes into hparams and checkpoints)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class ColSRSystem(pl.LightningModule):
    """Joint colorization + super-resolution, supervised.

    The network and optimizer arrive as *configs* (dicts with ``_target_``), not objects:
    they are stored in the checkpoint's hyper-parameters, so
    ``ColSRSystem.load_from_checkpoint(path)`` rebuilds the exact network with no Hydra
    config at hand, and no ``nn.Module`` is ever pickled into hparams.

    Args:
        net: config of an ``nn.Module`` mapping ``(B, 1, r, r)`` normalized L* to
            ``(B, 2, S, S)`` normalized a*b*.
        optimizer: config of a ``torch.optim`` optimizer with ``_partial_: true``.
        scheduler: config of an LR scheduler with ``_partial_: true``, or ``None``.
        scheduler_monitor: metric a ReduceLROnPlateau-style scheduler watches.
        scheduler_interval: ``epoch`` or ``step``.

    Logged: ``train/loss``; ``val/loss``, ``val/psnr`` (protocol in :mod:`joint_colsr.metrics`)
    and ``val/psnr_gray`` (the same images with a* = b* = 0); ``data/skipped``.
    """

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        net, optimizer, scheduler = _plain(net), _plain(optimizer), _plain(scheduler)
        self.save_hyperparameters(
            {"net": net, "optimizer": optimizer, "scheduler": scheduler,
             "scheduler_monitor": scheduler_monitor, "scheduler_interval": scheduler_interval}
        )
        self.net = instantiate(net)
        self.val_loss = MeanMetric()
        self.val_psnr = MeanMetric()
        self.val_psnr_gray = MeanMetric()
        #: First validation batch of the epoch, kept on CPU for the image-grid callback.
        self.val_examples: dict[str, Tensor] | None = None

    def forward(self, l_lowres: Tensor, l_highres: Tensor | None = None) -> Tensor:
        """``(B, 1, r, r)`` normalized L* -> ``(B, 2, S, S)`` normalized a*b*."""
        return self.infer({"l_lowres": l_lowres, "l_highres": l_highres})["ab"]

    def infer(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run the network on a batch and return its outputs by name.

        The network contract (every net in :mod:`joint_colsr.nets`):

        * input: ``net(l_lowres)``; a net whose attribute ``needs_l_highres`` is true is
          called as ``net(l_lowres, l_highres=...)`` (ground-truth L* as guidance);
        * output: a tensor of a*b*, or a dict with ``"ab"`` and optionally ``"l"``
          (its own high-resolution L*, normalized) and ``"logits"`` (class scores).

        Returns:
            dict with ``"ab"`` ``(B, 2, S, S)`` and whatever else the net returned.
        """
        kwargs = {}
        if getattr(self.net, "needs_l_highres", False):
            if batch.get("l_highres") is None:
                raise ValueError(f"{type(self.net).__name__} needs ground-truth L* (l_highres) as guidance")
            kwargs["l_highres"] = batch["l_highres"]
        out = self.net(batch["l_lowres"], **kwargs)
        return dict(out) if isinstance(out, Mapping) else {"ab": out}

    def _check_sizes(self, ab_pred: Tensor, ab_target: Tensor) -> None:
        if ab_pred.shape != ab_target.shape:
            raise ValueError(
                f"network output {tuple(ab_pred.shape)} does not match target {tuple(ab_target.shape)}: "
                "model.net.output_size must equal data.output_size"
            )

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        ab_pred = self.infer(batch)["ab"]
        self._check_sizes(ab_pred, batch["ab_target"])
        loss = F.mse_loss(ab_pred.float(), batch["ab_target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=ab_pred.shape[0])
        if "skipped" in batch:
            self.log("data/skipped", batch["skipped"].sum().float(), reduce_fx="sum", batch_size=1)
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        ab_pred = self.infer(batch)["ab"]
        self._check_sizes(ab_pred, batch["ab_target"])
        n = ab_pred.shape[0]
        per_image_mse = (ab_pred.float() - batch["ab_target"]).pow(2).mean(dim=(1, 2, 3))
        self.val_loss.update(per_image_mse)
        self.val_psnr.update(colorization_psnr(batch["l_highres"], ab_pred, batch["rgb_target"]))
        self.val_psnr_gray.update(colorization_psnr(batch["l_highres"], torch.zeros_like(ab_pred), batch["rgb_target"]))
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=n)
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=n)
        self.log("val/psnr_gray", self.val_psnr_gray, batch_size=n)
        if batch_idx == 0:
            keep = ("l_lowres", "l_highres", "rgb_target")
            self.val_examples = {k: batch[k][:16].detach().cpu() for k in keep}
            self.val_examples["ab_pred"] = ab_pred[:16].detach().float().cpu()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = instantiate(hp.optimizer)(params=self.parameters())
        if not hp.scheduler:
            return optimizer
        scheduler = instantiate(hp.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": hp.scheduler_monitor, "interval": hp.scheduler_interval},
        }
