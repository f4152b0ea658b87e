"""One builder that turns a composed config into (datamodule, system, callbacks, loggers, trainer).

``train``, ``eval``, ``predict`` and ``bench`` all build through here, so nothing is
instantiated twice in two ways. :func:`check_config` runs first and catches what can be
caught before any data is read.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as _hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from joint_colsr.callbacks import ChannelsLast

log = logging.getLogger(__name__)


#: ``speed.compile_mode`` values (``torch.compile``'s modes; null = its default).
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key and what was expected."""


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises our own start-up errors as themselves.

    Hydra wraps every exception raised by a ``_target_`` in ``InstantiationException``;
    a user should see "data.root=... is not a folder", not a page of Hydra internals.
    """
    try:
        return _hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError, RuntimeError, NotImplementedError)):
            raise cause.with_traceback(None) from None
        raise


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def check_config(cfg: DictConfig) -> None:
    """Fail fast, naming the key, on configs that would fail later."""
    for group in ("data", "model", "trainer"):
        if _get(cfg, group) is None:
            raise ConfigError(f"config has no '{group}' group; pick one with {group}=NAME")
    missing = sorted(str(k) for k in cfg.data if OmegaConf.is_missing(cfg.data, k))
    if missing:
        keys = ", ".join(f"data.{k}" for k in missing)
        raise ConfigError(f"{keys} must be set for this data source (e.g. data.root=DIR)")
    in_size, out_size = _get(cfg, "data.input_size"), _get(cfg, "data.output_size")
    if not isinstance(in_size, int) or not isinstance(out_size, int) or not 1 <= in_size <= out_size:
        raise ConfigError(f"data.input_size ({in_size}) and data.output_size ({out_size}) must be integers with input <= output")
    for key, want in (("model.net.input_size", in_size), ("model.net.output_size", out_size)):
        got = _get(cfg, key)
        if got is not None and got != want:
            raise ConfigError(f"{key}={got} does not match data.{key.split('.')[-1]}={want}; set the data keys (the model follows them)")
    batch = _get(cfg, "data.batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"data.batch_size must be a positive integer, got {batch!r}")
    seed = _get(cfg, "seed")
    if seed is not None and not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer or null, got {seed!r}")
    for key in ("speed.channels_last", "speed.compile"):
        if not isinstance(_get(cfg, key), (bool, type(None))):
            raise ConfigError(f"{key} must be true or false, got {_get(cfg, key)!r}")
    mode = _get(cfg, "speed.compile_mode")
    if mode not in COMPILE_MODES:
        raise ConfigError(f"speed.compile_mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    if _get(cfg, "trainer.use_distributed_sampler"):
        raise ConfigError("trainer.use_distributed_sampler must stay false: the data module shards each epoch itself")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain data, interpolations resolved (Hydra's own node left out)."""
    return {str(k): OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items() if k != "hydra"}


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data, _convert_="partial")


def build_system(cfg: DictConfig) -> pl.LightningModule:
    # Not recursive: the system receives the net/optimizer *configs* and builds them itself.
    system = instantiate(cfg.model, _recursive_=False)
    if _get(cfg, "speed.channels_last"):
        # Also done by the ChannelsLast callback (which converts the batches) at setup; here it
        # covers systems used without a Trainer.
        system.to(memory_format=torch.channels_last)
    if _get(cfg, "speed.compile"):
        # In place (nn.Module.compile): parameter names and checkpoints stay those of the plain net.
        system.net.compile(mode=_get(cfg, "speed.compile_mode"))
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


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = _instantiate_group(_get(cfg, "callbacks"), "callbacks")
    if _get(cfg, "speed.channels_last"):
        callbacks.append(ChannelsLast())
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return _instantiate_group(_get(cfg, "logger"), "logger")


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback] | None = None, loggers: list[Any] | None = None) -> pl.Trainer:
    return instantiate(cfg.trainer, callbacks=callbacks or [], logger=loggers or False)
