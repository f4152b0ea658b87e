"""The supervised LightningModule: any network mapping low-res L* to high-res a*b*, trained with MSE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MeanMetric

from joint_colsr.run.checkpointing import read_checkpoint
from joint_colsr.color import upscale_l
from joint_colsr.metrics import colorization_psnr

#: Checkpoint entries written by :meth:`ColSRSystem.on_save_checkpoint`: the class that wrote
#: it (``module.Class``) and the data task it was trained on (:attr:`ColSRSystem.data_task`).
SYSTEM_CLASS_KEY = "system_class"
DATA_TASK_KEY = "data_task"
#: The data module attributes that define the task (what eval / predict must reproduce).
DATA_TASK_FIELDS = ("input_size", "output_size", "lowres_interpolation", "with_labels", "filters", "scale_range", "exemplar_size")


def uses_ground_truth_l(net: nn.Module) -> bool:
    """Whether ``net`` takes the ground-truth high-resolution L* (``needs_l_highres``): the
    ``residual_joint`` net with ``l_source=gt`` and the ``gray`` baseline."""
    return bool(getattr(net, "needs_l_highres", False))


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
    config at hand, and no ``nn.Module`` is ever pickled into hparams. Each checkpoint also
    names its system class and data task, so :meth:`from_checkpoint` rebuilds the right
    subclass (``GANSystem`` ...) from the file alone, wherever it was copied.

    Args:
        net: config of an ``nn.Module`` mapping ``(B, 1, r, r)`` normalized L* to
            ``(B, 2, S, S)`` normalized a*b* (or a dict of outputs: see :meth:`infer`).
        optimizer: config of a ``torch.optim`` optimizer with ``_partial_: true``.
        scheduler: config of an LR scheduler with ``_partial_: true``, or ``None``.
        scheduler_monitor: metric a ReduceLROnPlateau-style scheduler watches.
        scheduler_interval: ``epoch`` or ``step``.
        l_loss_weight: weight of the MSE on the net's own L* (only for nets that return ``l``).
        classification_loss_weight: weight of the multi-label BCE on ``logits`` against the
            batch's ``labels`` (only for nets that return ``logits``; Iizuka et al. used 1/300).

    The training loss is ``MSE(ab) + l_loss_weight * MSE(l) + classification_loss_weight * BCE(logits)``,
    each term present only when the net returns that output.

    Logged: ``train/loss`` (and ``train/loss_ab``, ``train/loss_l``, ``train/loss_cls`` when
    there is more than one term); ``val/loss``: the same weighted sum on the validation
    images (what the LR scheduler watches: it moves with every output the net has);
    ``val/loss_ab`` (a*b* MSE alone, comparable across nets); ``val/psnr`` (protocol 1:
    ground-truth L* + predicted a*b*, see :mod:`joint_colsr.metrics`); ``val/psnr_joint``
    (protocol 2, the name ``eval`` uses too: the net's own L*, or its input L* upscaled by
    :func:`~joint_colsr.color.upscale_l` when it has none, + its a*b*: the whole joint
    output, what the best checkpoint is chosen by); not for nets guided by the ground-truth
    L* (:attr:`uses_ground_truth_l`), whose L* is given, not produced); ``val/psnr_gray``
    (the same images with a* = b* = 0); for nets that return ``l``: ``val/loss_l``;
    ``data/skipped`` (photos replaced because they could not be used, per epoch, summed over ranks).
    """

    #: Hyper-parameters :meth:`from_checkpoint` overrides for inference (eval, predict).
    inference_hparams: dict[str, Any] = {}

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: str = "epoch",
        l_loss_weight: float = 1.0,
        classification_loss_weight: float = 1.0 / 300,
    ) -> None:
        super().__init__()
        net, optimizer, scheduler = _plain(net), _plain(optimizer), _plain(scheduler)
        self.save_hyperparameters(
            {"net": net, "optimizer": optimizer, "scheduler": scheduler,
             "scheduler_monitor": scheduler_monitor, "scheduler_interval": scheduler_interval,
             "l_loss_weight": l_loss_weight, "classification_loss_weight": classification_loss_weight}
        )
        self.net = instantiate(net)
        # nan_strategy="disable": MeanMetric's default checks every update for NaN with a host
        # read (a GPU sync per batch and metric); a NaN shows in the epoch's mean anyway.
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_loss_ab = MeanMetric(nan_strategy="disable")
        self.val_psnr = MeanMetric(nan_strategy="disable")
        self.val_psnr_gray = MeanMetric(nan_strategy="disable")
        self.val_loss_l = MeanMetric(nan_strategy="disable")
        self.val_psnr_joint = MeanMetric(nan_strategy="disable")
        #: Per-epoch sums on the device, logged at the epoch's end: log name -> running count.
        self._epoch_counts: dict[str, Tensor] = {}
        #: First validation batch of the epoch, kept on CPU for the image-grid callback.
        self.val_examples: dict[str, Tensor] | None = None
        #: The data the weights were trained on (``input_size``, ``output_size``,
        #: ``lowres_interpolation``, ``with_labels``): set when loaded from a checkpoint.
        self.data_task: dict[str, Any] | None = None

    # -- checkpoints --------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: Any = "cpu", inference: bool = False,
                        **kwargs: Any) -> "ColSRSystem":
        """Rebuild the system that wrote ``path``, with its weights, from the file alone.

        The class is the one the checkpoint names (``GANSystem`` for a ``model=srgan`` run;
        checkpoints without the entry: told apart by their hyper-parameters), the network
        comes from the saved hyper-parameters, and :attr:`data_task` from the saved data task
        (older checkpoints: the network's sizes). ``inference=True`` leaves out what only
        training needs (the class's :attr:`inference_hparams`, e.g. the GAN's VGG file, which
        may not exist where the checkpoint was copied to). ``kwargs`` override
        hyper-parameters, as in ``load_from_checkpoint``.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            ValueError: the file is not a checkpoint of this suite, or its class is not ``cls``
                or a subclass.
        """
        from hydra.utils import get_class

        path = Path(path).expanduser()
        target = saved_system_class(path)
        try:
            system_class = get_class(target)
        except Exception as err:  # noqa: BLE001 - Hydra raises several kinds for an unknown target
            raise ValueError(f"{path} was written by {target}, which cannot be imported: {err}") from None
        if not issubclass(system_class, cls):
            raise ValueError(f"{path} holds a {system_class.__name__}, not a {cls.__name__}")
        overrides = {**(system_class.inference_hparams if inference else {}), **kwargs}
        return system_class.load_from_checkpoint(str(path), map_location=map_location, **overrides)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SYSTEM_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        task = {k: getattr(datamodule, k) for k in DATA_TASK_FIELDS if hasattr(datamodule, k)}
        checkpoint[DATA_TASK_KEY] = task or self.data_task or self._data_task_from_net()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.data_task = dict(checkpoint.get(DATA_TASK_KEY) or self._data_task_from_net())

    def _data_task_from_net(self) -> dict[str, Any]:
        return {k: v for k in ("input_size", "output_size") if (v := model_size(self, k)) is not None}

    @property
    def uses_ground_truth_l(self) -> bool:
        """True when the net takes the ground-truth high-resolution L* as input (guidance):
        an advantage no blind model has; every table marks such a model "GT-L* guided"."""
        return uses_ground_truth_l(self.net)

    @property
    def selection_metric(self) -> str:
        """What the best checkpoint and a hyper-parameter search should maximize:
        ``val/psnr_joint`` (the whole joint output), or ``val/psnr`` for GT-L*-guided nets."""
        return "val/psnr" if self.uses_ground_truth_l else "val/psnr_joint"

    @property
    def eval_net(self) -> nn.Module:
        """The network :meth:`infer` runs in eval mode (subclasses may return averaged weights)."""
        return self.net

    def forward(self, l_lowres: Tensor, l_highres: Tensor | None = None) -> Tensor:
        """``(B, 1, r, r)`` normalized L* -> ``(B, 2, S, S)`` normalized a*b*."""
        return self.infer({"l_lowres": l_lowres, "l_highres": l_highres})["ab"]

    def infer(self, batch: Mapping[str, Tensor], net: nn.Module | None = None) -> dict[str, Tensor]:
        """Run the network on a batch and return its outputs by name.

        The network contract (every net in :mod:`joint_colsr.nets`):

        * input: ``net(l_lowres)``; a net whose attribute ``needs_l_highres`` is true is
          called as ``net(l_lowres, l_highres=...)`` (ground-truth L* as guidance); a net
          whose attribute ``any_scale`` is true also gets ``out_hw=(H, W)``: the batch's
          ``out_hw`` when it has one (prediction at a chosen size), else the size of its
          ``ab_target`` (training and evaluation at the batch's scale), else None (the net's
          built scale); a net whose attribute ``takes_exemplar`` is true also gets the batch's
          ``exemplar`` ``(B, 3, E, E)`` (normalized L*a*b*, or None: automatic mode) and
          ``exemplar_mask`` ``(B,)`` bool (which samples have one);
        * output: a tensor of a*b*, or a dict with ``"ab"`` and optionally ``"l"``
          (its own high-resolution L*, normalized) and ``"logits"`` (class scores).

        Args:
            batch: at least ``l_lowres`` (and ``l_highres`` for guided nets).
            net: the network to run; default: ``self.net`` in training mode, :attr:`eval_net`
                in eval mode (validation, evaluation, prediction: EMA weights where there are any).

        Returns:
            dict with ``"ab"`` ``(B, 2, S, S)`` and whatever else the net returned.
        """
        if net is None:
            net = self.net if self.training else self.eval_net
        return call_net(net, batch["l_lowres"], batch.get("l_highres"), requested_output_hw(batch), batch.get("exemplar"),
                        batch.get("exemplar_mask"))

    def supervised_losses(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The weighted pixel (and label) losses of the net's outputs.

        Returns:
            ``{"loss": total, "loss_ab": ...}`` plus ``"loss_l"`` when the net returns ``l``
            and ``"loss_cls"`` when it returns ``logits``.
        """
        hp = self.hparams
        self._check_sizes(out["ab"], batch["ab_target"])
        losses = {"loss_ab": F.mse_loss(out["ab"].float(), batch["ab_target"])}
        total = losses["loss_ab"]
        if "l" in out:
            self._check_sizes(out["l"], batch["l_highres"], "L*")
            losses["loss_l"] = F.mse_loss(out["l"].float(), batch["l_highres"])
            total = total + hp.l_loss_weight * losses["loss_l"]
        if "logits" in out:
            labels = batch.get("labels")
            if labels is None:
                raise ValueError(
                    "model.net.classification=true needs image-level labels: batches must carry 'labels' "
                    "(B, num_classes) multi-hot floats, and this data source gives none "
                    "(use COCO data with labels, or set model.net.classification=false)"
                )
            if labels.shape != out["logits"].shape:
                raise ValueError(f"batch labels {tuple(labels.shape)} do not match the net's logits "
                                 f"{tuple(out['logits'].shape)}: set model.net.num_classes to the data's class count")
            losses["loss_cls"] = F.binary_cross_entropy_with_logits(out["logits"].float(), labels.float())
            total = total + hp.classification_loss_weight * losses["loss_cls"]
        losses["loss"] = total
        return losses

    def _check_sizes(self, pred: Tensor, target: Tensor, what: str = "a*b*") -> None:
        if pred.shape != target.shape:
            raise ValueError(
                f"network {what} output {tuple(pred.shape)} does not match target {tuple(target.shape)}: "
                "model.net.output_size must equal data.output_size (and data.scale_range, which varies the "
                "target size, needs an any-scale net: model.net.upsampler=implicit)"
            )

    def _log_train_losses(self, losses: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        n = batch["l_lowres"].shape[0]
        # Not prog_bar=True: Lightning reads progress-bar values back every batch (a GPU sync);
        # joint_colsr.run.callbacks.ProgressBar shows the value read at logging steps instead.
        self.log("train/loss", losses["loss"], batch_size=n)
        if len(losses) > 2:  # more than one term: log each
            for name, value in losses.items():
                if name != "loss":
                    self.log(f"train/{name}", value, batch_size=n)
        self._count_skipped(batch)

    def _count_skipped(self, batch: Mapping[str, Tensor]) -> None:
        # Summed on the device and logged once per epoch: a self.log call per step costs
        # about 0.4 ms of host time (make bench: lightning_self_log_call_ms).
        # exemplar_skipped: exemplar photos that could not be used (the sample trained without one).
        for key, name in (("skipped", "data/skipped"), ("exemplar_skipped", "data/skipped_exemplars")):
            if key in batch:
                count = batch[key].sum()
                self._epoch_counts[name] = count if name not in self._epoch_counts else self._epoch_counts[name] + count

    def on_train_epoch_end(self) -> None:
        for name, count in self._epoch_counts.items():
            self.log(name, count.float(), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        self._epoch_counts = {}

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.supervised_losses(self.infer(batch), batch)
        self._log_train_losses(losses, batch)
        return losses["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        scaled = batch.get("by_scale")
        if scaled is None:
            self._validate(batch, keep_examples=batch_idx == 0)
            return
        # Any-scale training (data.val_scales): the same photos at every scale. val/* are the
        # means over scales (what selects the best checkpoint); val_scale/*_x<S> each scale.
        for i, (label, sub) in enumerate(scaled.items()):
            psnr, psnr_joint = self._validate(sub, keep_examples=batch_idx == 0 and i == len(scaled) - 1)
            n = psnr.shape[0]
            self.log(f"val_scale/psnr_x{label}", psnr.mean(), batch_size=n)
            if psnr_joint is not None:
                self.log(f"val_scale/psnr_joint_x{label}", psnr_joint.mean(), batch_size=n)

    def _validate(self, batch: Mapping[str, Tensor], keep_examples: bool) -> tuple[Tensor, Tensor | None]:
        """Score one validation batch into the epoch's metrics: per-image protocol 1 and 2 PSNR (None: GT-L* guided)."""
        out = self.infer(batch)
        ab_pred = out["ab"]
        losses = self.supervised_losses(out, batch)  # the training objective, every term
        n = ab_pred.shape[0]
        psnr, psnr_joint = colorization_psnr(batch["l_highres"], ab_pred, batch["rgb_target"]), None
        self.val_loss.update(losses["loss"], weight=n)
        self.val_loss_ab.update(losses["loss_ab"], weight=n)
        self.val_psnr.update(psnr)
        self.val_psnr_gray.update(colorization_psnr(batch["l_highres"], torch.zeros_like(ab_pred), batch["rgb_target"]))
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=n)
        self.log("val/loss_ab", self.val_loss_ab, batch_size=n)
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=n)
        self.log("val/psnr_gray", self.val_psnr_gray, batch_size=n)
        if "l" in out:
            self.val_loss_l.update(losses["loss_l"], weight=n)
            self.log("val/loss_l", self.val_loss_l, batch_size=n)
        if not self.uses_ground_truth_l:
            l_own = out["l"].float() if "l" in out else upscale_l(batch["l_lowres"], tuple(ab_pred.shape[-2:]))
            psnr_joint = colorization_psnr(l_own, ab_pred, batch["rgb_target"])
            self.val_psnr_joint.update(psnr_joint)
            self.log("val/psnr_joint", self.val_psnr_joint, prog_bar=True, batch_size=n)
        if keep_examples:
            keep = ("l_lowres", "l_highres", "rgb_target", *(["exemplar_rgb"] if batch.get("exemplar_rgb") is not None else []))
            self.val_examples = {k: batch[k][:16].detach().cpu() for k in keep}
            self.val_examples["ab_pred"] = ab_pred[:16].detach().float().cpu()
        return psnr, psnr_joint

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = instantiate(hp.optimizer)(params=[p for p in self.parameters() if p.requires_grad])
        if not hp.scheduler:
            return optimizer
        scheduler = instantiate(hp.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": hp.scheduler_monitor, "interval": hp.scheduler_interval},
        }


def call_net(net: nn.Module, l_lowres: Tensor, l_highres: Tensor | None = None,
             out_hw: tuple[int, int] | None = None, exemplar: Tensor | None = None,
             exemplar_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Call any network of the suite by its contract (see :meth:`ColSRSystem.infer`): ``l_highres``
    only to nets that declare ``needs_l_highres``, ``out_hw`` only to nets that declare
    ``any_scale`` (a fixed-scale net produces its own size), ``exemplar`` (``(B, 3, E, E)``
    normalized L*a*b*) and ``exemplar_mask`` (``(B,)`` bool) only to nets that declare
    ``takes_exemplar`` (the others colour on their own); the outputs as a dict.

    Raises:
        ValueError: a guided net without ``l_highres``.
    """
    kwargs: dict[str, Any] = {}
    if getattr(net, "needs_l_highres", False):
        if l_highres is None:
            raise ValueError(f"{type(net).__name__} needs ground-truth L* (l_highres) at the output size as guidance")
        kwargs["l_highres"] = l_highres
    if getattr(net, "any_scale", False):
        kwargs["out_hw"] = out_hw
    if getattr(net, "takes_exemplar", False):
        kwargs["exemplar"], kwargs["exemplar_mask"] = exemplar, exemplar_mask
    out = net(l_lowres, **kwargs)
    return dict(out) if isinstance(out, Mapping) else {"ab": out}


def requested_output_hw(batch: Mapping[str, Any]) -> tuple[int, int] | None:
    """The output ``(H, W)`` a batch asks of an any-scale net: ``out_hw``, else ``ab_target``'s size, else None."""
    if batch.get("out_hw") is not None:
        return tuple(int(v) for v in batch["out_hw"])  # type: ignore[return-value]
    target = batch.get("ab_target")
    return tuple(target.shape[-2:]) if target is not None else None


def saved_system_class(path: str | os.PathLike) -> str:
    """``module.Class`` of the system that wrote the checkpoint at ``path``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is not a checkpoint of this suite.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    checkpoint = read_checkpoint(path)
    if "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path} is not a checkpoint of this suite (no hyper_parameters)")
    return system_class_of(checkpoint)


def system_class_of(checkpoint: Mapping[str, Any]) -> str:
    """``module.Class`` of the system that wrote a loaded checkpoint dict."""
    return str(checkpoint.get(SYSTEM_CLASS_KEY) or system_class_from_hparams(checkpoint["hyper_parameters"]))


def system_class_from_hparams(hparams: Mapping[str, Any]) -> str:
    """The system class of a checkpoint that does not name one (written before it did)."""
    if "discriminator" in hparams:
        return "joint_colsr.systems.gan.GANSystem"
    return "joint_colsr.systems.colsr.ColSRSystem"


def model_size(system: pl.LightningModule, key: str) -> int | None:
    """``input_size`` or ``output_size`` of a system's network (hyper-parameters, then the net)."""
    net_hparams = getattr(system, "hparams", {}).get("net") or {}
    value = net_hparams.get(key) if isinstance(net_hparams, Mapping) else None
    if value is None:
        value = getattr(getattr(system, "net", None), key, None)
    return int(value) if value is not None else None


def eval_network(system: pl.LightningModule) -> Any:
    """The network inference uses: a system's averaged weights where it keeps them (``eval_net``)."""
    return getattr(system, "eval_net", None) or system.net


def run_system(system: pl.LightningModule, batch: Any) -> dict[str, Any]:
    """``system.infer`` on the inference network: ``{"ab", "l"?, "logits"?}``."""
    net = eval_network(system)
    if net is system.net:
        return system.infer(batch)
    return system.infer(batch, net=net)
