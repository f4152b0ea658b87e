"""Run assembly: a checked config -> (datamodule, system, callbacks, loggers, trainer).

``train``, ``eval``, ``predict``, ``preprocess`` and ``bench`` all build through here, so
nothing is instantiated twice in two ways. The config is checked first
(:mod:`joint_colsr.run.config_checks`); trained models are loaded by the systems themselves
(:meth:`joint_colsr.systems.ColSRSystem.from_checkpoint`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from joint_colsr.run.callbacks import ChannelsLast, ValidationImageGrid
from joint_colsr.run.config_checks import ConfigError, cache_only, check_deterministic, check_model_output, instantiate, select

log = logging.getLogger(__name__)


def start_run(cfg: DictConfig) -> Path:
    """Seed everything (``seed: null`` leaves it to chance), apply process-wide speed settings,
    and create the run directory."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if select(cfg, "speed.float32_matmul_precision"):
        torch.set_float32_matmul_precision(select(cfg, "speed.float32_matmul_precision"))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain data, interpolations resolved (Hydra's own node left out)."""
    if cache_only(cfg):  # data.root is ??? and unused: record it as null
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.data.root = None
    return {str(k): OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items() if k != "hydra"}


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    if cache_only(cfg):
        # No photo folder: the source (which would list it) is not built; the cache's own
        # index describes the photos, their split and their labels.
        datamodule = instantiate(cfg.data, source=None, root=None, _convert_="partial")
    else:
        datamodule = instantiate(cfg.data, _convert_="partial")
    if select(cfg, "speed.compile") and hasattr(datamodule, "compile_lab_conversion"):
        datamodule.compile_lab_conversion = True  # the LAB conversion on the device fuses too
    return datamodule


def build_system(cfg: DictConfig, startup_checks: bool = False) -> pl.LightningModule:
    """The configured LightningModule; ``startup_checks`` runs :func:`check_model_output` and
    :func:`check_deterministic` on the plain net first.

    With ``speed.compile`` the net is compiled last, with static shapes (``dynamic=False``):
    the checks run the plain net, so the training graph is compiled once, for the training
    batch (validation compiles an eval graph; another batch size, such as a last partial
    validation batch, compiles its own static graph once).
    """
    # Not recursive: the system receives the net/optimizer *configs* and builds them itself.
    system = instantiate(cfg.model, _recursive_=False)
    if select(cfg, "speed.channels_last"):
        # Also done by the ChannelsLast callback (which converts the batches) at setup; here it
        # covers systems used without a Trainer.
        system.to(memory_format=torch.channels_last)
    if startup_checks:
        check_model_output(system, cfg)
        check_deterministic(system, cfg)
    if select(cfg, "speed.compile"):
        # In place (nn.Module.compile): parameter names and checkpoints stay those of the plain net.
        system.net.compile(mode=select(cfg, "speed.compile_mode"), dynamic=False)
    return system


def _instantiate_group(group: DictConfig | None, kind: str) -> list[Any]:
    objects: list[Any] = []
    if not group:
        return objects
    if not isinstance(group, DictConfig):
        raise ConfigError(f"{kind} config must be a mapping of name -> object config")
    for name, conf in group.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("instantiating %s <%s>", kind, conf._target_)
            objects.append(instantiate(conf))
    return objects


def build_callbacks(cfg: DictConfig, system: pl.LightningModule | None = None) -> list[pl.Callback]:
    """The ``callbacks`` group; given the system, leaves out weight averaging where the system
    averages its own weights (``averages_own_weights = True``, e.g. the GAN's generator EMA)."""
    callbacks = _instantiate_group(select(cfg, "callbacks"), "callbacks")
    if select(cfg, "trainer.fast_dev_run"):
        # fast_dev_run writes no files: Lightning skips checkpoints during it, except the
        # last.ckpt a save_last ModelCheckpoint still writes when fit ends; no image grids either.
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks = [c for c in callbacks if not isinstance(c, (ModelCheckpoint, ValidationImageGrid))]
    if system is not None and getattr(system, "averages_own_weights", False):
        from lightning.pytorch.callbacks import WeightAveraging

        dropped = [type(c).__name__ for c in callbacks if isinstance(c, WeightAveraging)]
        if dropped:
            log.info("%s averages its own weights: leaving out %s", type(system).__name__, ", ".join(dropped))
        callbacks = [c for c in callbacks if not isinstance(c, WeightAveraging)]
    if system is not None and getattr(system, "uses_ground_truth_l", False):
        _select_on(callbacks, "val/psnr_joint", system.selection_metric)
    if select(cfg, "speed.channels_last"):
        callbacks.append(ChannelsLast())
    if select(cfg, "speed.sync_debug"):
        from joint_colsr.run.syncs import SyncDebug

        callbacks.append(SyncDebug(select(cfg, "speed.sync_debug")))
    return callbacks


def _select_on(callbacks: list[pl.Callback], wanted: str, available: str) -> None:
    """Checkpoints that monitor ``wanted`` (protocol 2) monitor ``available`` instead: a
    GT-L*-guided net has no own L*, so it logs no ``val/psnr_joint``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor == wanted:
            log.info("the net is GT-L* guided (no own L*): the best checkpoint is chosen by %s", available)
            cb.monitor = available
            # best-epochEEE-psnr_jointPP.PP -> best-epochEEE-psnrPP.PP: the name says the metric it carries
            short_wanted, short_available = wanted.split("/")[-1], available.split("/")[-1]
            cb.filename = cb.filename.replace(short_wanted, short_available) if cb.filename else cb.filename


def build_loggers(cfg: DictConfig) -> list[Any]:
    return _instantiate_group(select(cfg, "logger"), "logger")


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback] | None = None, loggers: list[Any] | None = None,
                  system: pl.LightningModule | None = None) -> pl.Trainer:
    """The configured Trainer. With ``trainer.strategy=ddp`` and a ``system`` whose training
    step leaves some parameters without gradients on purpose (``DDP_FIND_UNUSED_PARAMETERS``:
    a GAN's generator and discriminator steps), DDP is told to find them each backward."""
    callbacks = list(callbacks or [])
    if not loggers:
        # LearningRateMonitor refuses a Trainer without loggers; with logger=none it has nowhere to write anyway.
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    overrides: dict[str, Any] = {}
    if select(cfg, "trainer.deterministic") is True and select(cfg, "trainer.benchmark"):
        # cuDNN's autotuner picks kernels by timing (trainer=gpu turns it on): no determinism with it.
        log.info("trainer.deterministic=true: cuDNN autotuning (trainer.benchmark) turned off")
        overrides["benchmark"] = False
    if select(cfg, "trainer.strategy") == "ddp" and getattr(system, "DDP_FIND_UNUSED_PARAMETERS", False):
        log.info("trainer.strategy=ddp with %s: ddp_find_unused_parameters_true (each of its backward passes "
                 "leaves the other network's parameters unused)", type(system).__name__)
        overrides["strategy"] = "ddp_find_unused_parameters_true"
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)



# -- trained models and baselines for eval / predict ------------------------------------------


def build_eval_system(cfg: DictConfig) -> pl.LightningModule:
    """The model ``eval`` and ``predict`` run: ``ckpt_path=CKPT`` (any checkpoint of the suite,
    wherever it lies: it rebuilds its own system class and network) or ``baseline=gray|bicubic``.

    The data sizes follow the model: ``data.input_size`` / ``data.output_size`` are set from
    the checkpoint's data task (a warning names any value that changes).
    """
    from joint_colsr.nets.baselines import BASELINES, baseline_net_config
    from joint_colsr.systems import ColSRSystem

    ckpt_path, baseline = select(cfg, "ckpt_path"), select(cfg, "baseline")
    if (ckpt_path is None) == (baseline is None):
        raise ConfigError(f"set exactly one of ckpt_path=CKPT or baseline={'|'.join(BASELINES)} "
                          f"(got ckpt_path={ckpt_path!r}, baseline={baseline!r})")
    in_size, out_size = select(cfg, "data.input_size"), select(cfg, "data.output_size")
    if baseline is not None:
        if baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        # The optimizer is never used: a baseline has no weights.
        return ColSRSystem(net=baseline_net_config(baseline, in_size or 96, out_size or 256),
                           optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}, scheduler=None)
    system = load_inference_system(ckpt_path, "ckpt_path")
    apply_data_task(cfg, system.data_task or {})
    return system


def load_inference_system(ckpt_path: Any, key: str) -> pl.LightningModule:
    """Any checkpoint of the suite as a system for inference (:meth:`ColSRSystem.from_checkpoint`).

    Raises:
        ConfigError: naming ``key`` and the file: missing, or not a checkpoint of the suite.
    """
    from joint_colsr.systems import ColSRSystem

    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={ckpt_path} is not a file")
    try:
        return ColSRSystem.from_checkpoint(path, map_location="cpu", inference=True)
    except ValueError as err:
        raise ConfigError(f"{key}={ckpt_path}: {err}") from None


def apply_data_task(cfg: DictConfig, task: dict[str, Any]) -> None:
    """Reproduce the run's degradation in ``cfg.data`` from the checkpoint's data task: the
    sizes, how L* was downscaled (``lowres_interpolation``) and the photo filters
    (``exclude_grayscale``, ``min_side``, ``max_aspect``). A checkpoint copied out of its run
    folder is so scored on the inputs it was trained on; a value that changes is logged."""
    if select(cfg, "data") is None:
        return
    wanted = {k: task[k] for k in ("input_size", "output_size", "lowres_interpolation") if task.get(k) is not None}
    wanted.update(task.get("filters") or {})
    with open_dict(cfg):
        for key, trained in wanted.items():
            current = cfg.data.get(key)
            if current is not None and current != trained:
                log.warning("data.%s=%s -> %s: the checkpoint was trained with %s", key, current, trained, trained)
            cfg.data[key] = trained
