"""``model=srgan``: adversarial training of any generator of the suite (SRGAN, Ledig et al. 2017).

The seed paper tried SRGAN and found it infeasible at its scale (mode collapse). This
system is built to run stably: the generator's pixel losses are the supervised system's
(so any net that returns ``l`` or ``logits`` keeps those terms), the adversarial weight is
small (SRGAN's 1e-3), the discriminator trains alone for ``discriminator_warmup_steps``
before its verdict reaches the generator, real labels are one-sided smoothed
(``real_label=0.9``), and an EMA of the generator can be validated instead of the raw one.
Validation, metrics and the image grid are :class:`ColSRSystem`'s, unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn

from joint_colsr.run.averaging import EMAModel
from joint_colsr.color import merge_l_ab_to_rgb
from joint_colsr.nets.vgg import VGG19Features
from joint_colsr.systems.colsr import ColSRSystem, _plain

log = logging.getLogger(__name__)


class GANSystem(ColSRSystem):
    """Generator (``net``) against a discriminator, with Lightning manual optimization.

    The discriminator judges normalized L*a*b* images at the output size: real =
    ground-truth L* + a*b*; fake = the generator's own L* (ground truth for nets that do
    not predict it) + its a*b*.

    Each training step: (1) generator step, with the discriminator's parameters frozen by
    ``toggle_optimizer``: ``pixel_loss_weight * supervised + adversarial_loss_weight * BCE(D(fake), 1)
    + perceptual_loss_weight * MSE(VGG(fake), VGG(real))``, the adversarial term only after the
    warm-up; (2) discriminator step on the detached fake: ``BCE(D(real), real_label) + BCE(D(fake), 0)``;
    (3) both schedulers stepped (``scheduler_interval=step``; ``epoch`` steps them after each
    training epoch, a ReduceLROnPlateau with ``scheduler_monitor``).

    Args:
        net: generator config (any net of :mod:`joint_colsr.nets`).
        discriminator: discriminator config (``(B, 3, S, S) -> (B,)`` logits).
        optimizer: generator optimizer config (``_partial_: true``).
        discriminator_optimizer: discriminator optimizer config (``None``: same as ``optimizer``).
        scheduler: LR scheduler config applied to each optimizer (``_partial_: true``) or ``None``.
        scheduler_monitor, scheduler_interval, l_loss_weight, classification_loss_weight: as in ColSRSystem.
        pixel_loss_weight: weight of the supervised (pixel) loss.
        adversarial_loss_weight: weight of the generator's adversarial loss.
        discriminator_warmup_steps: generator steps (batches) during which only the
            discriminator learns from the adversarial game (the generator trains on pixels
            alone); ``None`` with ``discriminator_warmup_fraction``.
        discriminator_warmup_fraction: the warm-up as a fraction in [0, 1) of the run's
            generator steps (``trainer.max_steps`` counts both optimizers' steps, so half of
            it; or batches per epoch x ``trainer.max_epochs``, whichever ends the run first),
            so a short run is adversarial for most of its steps; set at the start of
            training. ``None``: ``discriminator_warmup_steps`` applies.
        real_label: target of D(real) (one-sided label smoothing below 1).
        ema_decay: decay of an exponential moving average of the generator used for
            validation and inference (``None``: off).
        perceptual_weights_path: a local VGG19 state dict (torchvision keys); ``None``: no
            perceptual loss. Nothing is ever downloaded.
        perceptual_layer: VGG19 layer compared (SRGAN's VGG54: ``relu5_4``).
        perceptual_loss_weight: weight of the perceptual loss.

    Logged: ``train/loss`` (generator total), ``train/g_pixel``, ``train/g_adv``,
    ``train/g_perceptual``, ``train/d_loss``, ``train/d_real`` and ``train/d_fake`` (mean
    D probability on real and fake images), plus ColSRSystem's validation metrics.
    """

    #: Under DDP each of the two backward passes leaves the other network's parameters
    #: without gradients: DDP must look for them (``assembly.build_trainer``), or it refuses
    #: the step; each network's gradients are still all-reduced in its own backward.
    DDP_FIND_UNUSED_PARAMETERS = True

    #: The generator EMA lives here (``model.ema_decay``): the EMA callback would average
    #: the discriminator too, so the builder leaves it out for this system.
    averages_own_weights = True
    #: Inference needs no perceptual loss (and its VGG file may be absent where the checkpoint is).
    inference_hparams = {"perceptual_weights_path": None}

    def __init__(
        self,
        net: Mapping[str, Any],
        discriminator: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        discriminator_optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: str = "step",
        l_loss_weight: float = 1.0,
        classification_loss_weight: float = 1.0 / 300,
        pixel_loss_weight: float = 1.0,
        adversarial_loss_weight: float = 1e-3,
        discriminator_warmup_steps: int | None = 0,
        real_label: float = 0.9,
        ema_decay: float | None = None,
        perceptual_weights_path: str | None = None,
        perceptual_layer: str = "relu5_4",
        perceptual_loss_weight: float = 6e-3,
        discriminator_warmup_fraction: float | None = None,
    ) -> None:
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"model.scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        if (discriminator_warmup_steps is None) == (discriminator_warmup_fraction is None):
            raise ValueError("set one of model.discriminator_warmup_steps and model.discriminator_warmup_fraction, the "
                             f"other null; got {discriminator_warmup_steps} and {discriminator_warmup_fraction}")
        if discriminator_warmup_steps is not None and discriminator_warmup_steps < 0:
            raise ValueError(f"model.discriminator_warmup_steps must be >= 0, got {discriminator_warmup_steps}")
        if discriminator_warmup_fraction is not None and not 0.0 <= discriminator_warmup_fraction < 1.0:
            raise ValueError(f"model.discriminator_warmup_fraction must be in [0, 1), got {discriminator_warmup_fraction}")
        if not 0.0 < real_label <= 1.0:
            raise ValueError(f"model.real_label must be in (0, 1], got {real_label}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must be in (0, 1) or null, got {ema_decay}")
        super().__init__(net, optimizer, scheduler, scheduler_monitor, scheduler_interval,
                         l_loss_weight, classification_loss_weight)
        discriminator, discriminator_optimizer = _plain(discriminator), _plain(discriminator_optimizer)
        self.save_hyperparameters({
            **dict(self.hparams), "discriminator": discriminator, "discriminator_optimizer": discriminator_optimizer,
            "pixel_loss_weight": pixel_loss_weight, "adversarial_loss_weight": adversarial_loss_weight,
            "discriminator_warmup_steps": discriminator_warmup_steps,
            "discriminator_warmup_fraction": discriminator_warmup_fraction, "real_label": real_label, "ema_decay": ema_decay,
            "perceptual_weights_path": perceptual_weights_path, "perceptual_layer": perceptual_layer,
            "perceptual_loss_weight": perceptual_loss_weight,
        })
        self.automatic_optimization = False
        self.discriminator = instantiate(discriminator)
        self.net_ema = None
        if ema_decay is not None:
            self.net_ema = EMAModel(self.net, decay=ema_decay, use_buffers=True)
            self.net_ema.requires_grad_(False)
        self.perceptual = VGG19Features(perceptual_weights_path, perceptual_layer) if perceptual_weights_path else None
        # Generator steps taken, saved with the weights: warm-up survives a resume.
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        # The same count on the host, so that no step reads the device buffer back (a GPU
        # sync per step); None after a load: read once.
        self._generator_steps_on_host: int | None = 0
        # Warm-up in generator steps; from the fraction once the run's length is known (on_train_start).
        self.warmup_steps: int | None = discriminator_warmup_steps

    @property
    def eval_net(self) -> nn.Module:
        return self.net if self.net_ema is None else self.net_ema.module

    # -- losses -----------------------------------------------------------------------------

    @staticmethod
    def lab_image(l_norm: Tensor, ab_norm: Tensor) -> Tensor:
        """Normalized L* ``(B, 1, S, S)`` and a*b* ``(B, 2, S, S)`` -> the ``(B, 3, S, S)`` image D judges."""
        return torch.cat([l_norm.to(ab_norm.dtype), ab_norm], dim=1)

    def run_generator_steps(self) -> int:
        """The generator steps (batches) this run trains for: half of ``trainer.max_steps``
        (Lightning counts each of the two optimizers' steps), batches per epoch x
        ``trainer.max_epochs`` or the batches of ``callbacks.sample_budget``, whichever is
        reached first."""
        trainer = self.trainer
        limits = []
        if trainer.max_steps is not None and trainer.max_steps > 0:
            limits.append(trainer.max_steps // 2)
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(trainer.num_training_batches):
            limits.append(int(trainer.num_training_batches) * trainer.max_epochs)
        for callback in trainer.callbacks:  # callbacks.sample_budget (run/callbacks.py): ends the run on a sample count
            batch_size = getattr(trainer.datamodule, "batch_size", None)
            if getattr(callback, "samples", None) is not None and hasattr(callback, "steps_at_batch_size") and batch_size:
                limits.append(callback.steps_at_batch_size(int(batch_size), trainer.world_size))
        if not limits:
            raise ValueError("model.discriminator_warmup_fraction needs a run of known length: set trainer.max_steps or "
                             "trainer.max_epochs, or use model.discriminator_warmup_steps")
        return min(limits)

    def on_train_start(self) -> None:
        super().on_train_start()
        fraction = self.hparams.get("discriminator_warmup_fraction")
        if fraction is not None:
            total = self.run_generator_steps()
            self.warmup_steps = int(round(fraction * total))
            log.info("srgan: discriminator warm-up %d of %d generator steps (model.discriminator_warmup_fraction=%g)",
                     self.warmup_steps, total, fraction)

    def adversarial_active(self) -> bool:
        if self._generator_steps_on_host is None:
            self._generator_steps_on_host = int(self.generator_steps)  # the one host read, after a load
        if self.warmup_steps is None:
            raise RuntimeError("GANSystem: the warm-up fraction is turned into steps at the start of training")
        return self._generator_steps_on_host >= self.warmup_steps

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._generator_steps_on_host = None  # generator_steps came from the state dict

    def generator_losses(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Pixel (supervised), adversarial and perceptual terms and their weighted total ``loss``."""
        hp = self.hparams
        pixel = self.supervised_losses(out, batch)
        losses = {f"g_pixel_{k[5:]}" if k != "loss" else "g_pixel": v for k, v in pixel.items()}
        total = hp.pixel_loss_weight * pixel["loss"]
        l_fake = out.get("l", batch["l_highres"])
        if self.adversarial_active():
            logits_fake = self.discriminator(self.lab_image(l_fake, out["ab"]))
            losses["g_adv"] = F.binary_cross_entropy_with_logits(logits_fake.float(), torch.ones_like(logits_fake, dtype=torch.float32))
            total = total + hp.adversarial_loss_weight * losses["g_adv"]
        if self.perceptual is not None:
            fake_rgb = merge_l_ab_to_rgb(l_fake.float(), out["ab"].float())
            real_rgb = batch["rgb_target"].float() / 255.0
            with torch.no_grad():
                real_features = self.perceptual(real_rgb)
            losses["g_perceptual"] = F.mse_loss(self.perceptual(fake_rgb), real_features)
            total = total + hp.perceptual_loss_weight * losses["g_perceptual"]
        losses["loss"] = total
        return losses

    def discriminator_losses(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """``BCE(D(real), real_label) + BCE(D(fake), 0)``, and the mean D probabilities."""
        logits_real = self.discriminator(real).float()
        logits_fake = self.discriminator(fake).float()
        loss = (F.binary_cross_entropy_with_logits(logits_real, torch.full_like(logits_real, self.hparams.real_label))
                + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
        return {"d_loss": loss, "d_real": torch.sigmoid(logits_real).mean().detach(),
                "d_fake": torch.sigmoid(logits_fake).mean().detach()}

    # -- checkpoints: the fixed VGG weights stay in their own file ---------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("perceptual.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The VGG weights come from perceptual_weights_path (or are absent: load for inference
        # with perceptual_weights_path=None).
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("perceptual.")]:
            del state[key]
        if self.perceptual is not None:
            state.update({f"perceptual.{k}": v for k, v in self.perceptual.state_dict().items()})

    # -- training ---------------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        n = batch["l_lowres"].shape[0]

        self.toggle_optimizer(opt_g)  # D's parameters stop taking gradients
        out = self.infer(batch)
        g = self.generator_losses(out, batch)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g["loss"])
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.generator_steps += 1
        self._generator_steps_on_host = None if self._generator_steps_on_host is None else self._generator_steps_on_host + 1
        if self.net_ema is not None:
            self.net_ema.update_parameters(self.net)

        real = self.lab_image(batch["l_highres"], batch["ab_target"])
        fake = self.lab_image(out.get("l", batch["l_highres"]), out["ab"]).detach()
        self.toggle_optimizer(opt_d)
        d = self.discriminator_losses(real, fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d["d_loss"])
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        if self.hparams.scheduler_interval == "step":
            self._step_schedulers()
        self.log("train/loss", g["loss"], batch_size=n)  # no prog_bar: see ColSRSystem._log_train_losses
        for name, value in {**g, **d}.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=n)
        self._count_skipped(batch)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.hparams.scheduler_interval == "epoch":
            self._step_schedulers()

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get(self.hparams.scheduler_monitor)
                if metric is not None:  # no validation yet: nothing to react to
                    scheduler.step(metric)
            else:
                scheduler.step()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt_g = instantiate(hp.optimizer)(params=[p for p in self.net.parameters() if p.requires_grad])
        opt_d = instantiate(hp.discriminator_optimizer or hp.optimizer)(params=self.discriminator.parameters())
        if not hp.scheduler:
            return [opt_g, opt_d]
        schedulers = [{"scheduler": instantiate(hp.scheduler)(optimizer=opt), "interval": hp.scheduler_interval}
                      for opt in (opt_g, opt_d)]
        return [opt_g, opt_d], schedulers
