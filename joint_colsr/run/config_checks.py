"""Start-up checks of a composed config: everything that can fail before any data is read.

:func:`check_config` names the key and what was expected; :func:`check_targets` checks
every ``_target_`` node against its callable's signature; :func:`check_model_output` runs
the network once. :class:`ConfigError` is the one exception a wrong config raises: the
console commands print its message alone (no traceback; ``HYDRA_FULL_ERROR=1`` for one).
"""

from __future__ import annotations

import functools
import inspect
import linecache
import logging
import os
import sys
import types
import typing
from typing import Any, Callable, Union

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate as _hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

log = logging.getLogger(__name__)


#: ``speed.compile_mode`` values (``torch.compile``'s modes; null = its default).
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key and what was expected."""


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises what a ``_target_`` raised as itself.

    Hydra wraps every exception raised by a ``_target_`` in ``InstantiationException``;
    a user should see "data.root=... is not a folder", not a page of Hydra internals. The
    exception keeps its own traceback (a bug in a constructor shows where it is);
    :func:`command` decides what the user sees.
    """
    try:
        return _hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


#: Exceptions the suite raises on purpose, with a message for the user (bad value, missing file, unusable data).
_STATED_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError)


def is_expected_error(err: BaseException) -> bool:
    """A :class:`ConfigError`, or one of :data:`_STATED_ERRORS` raised by a ``raise``
    statement of this package (its message is the whole story). Anything raised inside a
    library, or of another type, is a bug or a surprise and keeps its traceback."""
    if isinstance(err, ConfigError):
        return True
    if not isinstance(err, _STATED_ERRORS) or err.__traceback__ is None:
        return False
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    if not str(frame.f_globals.get("__name__", "")).startswith("joint_colsr"):
        return False
    return linecache.getline(frame.f_code.co_filename, tb.tb_lineno).strip().startswith("raise ")


def command(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a console command's task function (under ``@hydra.main``): an expected error
    (:func:`is_expected_error`) ends a single run with its message alone on stderr and exit
    status 1, no traceback; third-party noise is dropped first (:mod:`joint_colsr.run.quiet`). ``HYDRA_FULL_ERROR=1`` shows the full traceback; in a multirun
    the error propagates, so the sweep summary records it and the next job runs."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        from joint_colsr.run.quiet import quiet_third_party_noise

        quiet_third_party_noise()  # the one place third-party noise is dropped (run/quiet.py)
        try:
            return task(cfg)
        except Exception as err:
            multirun = OmegaConf.select(cfg, "hydra.mode", default=None) == RunMode.MULTIRUN or _hydra_mode() == RunMode.MULTIRUN
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun or not is_expected_error(err):
                raise
            print(f"Error: {err}\n(the full traceback: HYDRA_FULL_ERROR=1)", file=sys.stderr)
            raise SystemExit(1) from None

    return run


def _hydra_mode() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().mode if HydraConfig.initialized() else None


def select(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at the dotted ``key``; ``None`` where it is absent or ``???``."""
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def check_config(cfg: DictConfig, groups: tuple[str, ...] = ("data", "model", "trainer")) -> None:
    """Fail fast, naming the key, on configs that would fail later.

    ``groups``: the config groups the command needs (``eval`` takes its model from the
    checkpoint and needs no ``model`` group).
    """
    for group in groups:
        if select(cfg, group) is None:
            raise ConfigError(f"config has no '{group}' group; pick one with {group}=NAME")
    missing = sorted(str(k) for k in cfg.data if OmegaConf.is_missing(cfg.data, k))
    if missing == ["root"] and cache_only(cfg):
        missing = []  # a decoded-image cache holds everything training reads
    if missing:
        keys = ", ".join(f"data.{k}" for k in missing)
        raise ConfigError(f"{keys} must be set for this data source (e.g. data.root=DIR)")
    in_size, out_size = select(cfg, "data.input_size"), select(cfg, "data.output_size")
    if not isinstance(in_size, int) or not isinstance(out_size, int) or not 1 <= in_size <= out_size:
        raise ConfigError(f"data.input_size ({in_size}) and data.output_size ({out_size}) must be integers with input <= output")
    for key, want in (("model.net.input_size", in_size), ("model.net.output_size", out_size)):
        got = select(cfg, key)
        if got is not None and got != want:
            raise ConfigError(f"{key}={got} does not match data.{key.split('.')[-1]}={want}; set the data keys (the model follows them)")
    batch = select(cfg, "data.batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"data.batch_size must be a positive integer, got {batch!r}")
    seed = select(cfg, "seed")
    if seed is not None and not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer or null, got {seed!r}")
    for key in ("speed.channels_last", "speed.compile"):
        if not isinstance(select(cfg, key), (bool, type(None))):
            raise ConfigError(f"{key} must be true or false, got {select(cfg, key)!r}")
    matmul = select(cfg, "speed.float32_matmul_precision")
    if matmul not in (None, "highest", "high", "medium"):
        raise ConfigError(f"speed.float32_matmul_precision must be null, highest, high or medium, got {matmul!r}")
    if select(cfg, "speed.sync_debug") not in (None, "warn", "error"):
        raise ConfigError(f"speed.sync_debug must be null, warn or error, got {select(cfg, 'speed.sync_debug')!r}")
    mode = select(cfg, "speed.compile_mode")
    if mode not in COMPILE_MODES:
        raise ConfigError(f"speed.compile_mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    accelerator = select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} (trainer=gpu) but torch sees no GPU "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}): train on the CPU with "
                          "trainer=cpu (or the default trainer, accelerator=auto), or install a CUDA build of torch")
    if select(cfg, "trainer.use_distributed_sampler"):
        raise ConfigError("trainer.use_distributed_sampler must stay false: the data module shards each epoch itself")
    for group in ("data", "model", "trainer", "callbacks", "logger"):
        if select(cfg, group) is not None:
            check_targets(cfg[group], group)


_SIMPLE_TYPES = (bool, int, float, str)


def _accepts(annotation: Any, value: Any) -> bool | None:
    """Whether ``value`` fits a *simple* annotation; ``None`` when the annotation is too rich to judge."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        verdicts = [_accepts(a, value) for a in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if annotation is type(None):
        return value is None
    if annotation is torch.Tensor:  # a config value is never a tensor (``lr: float | Tensor``)
        return isinstance(value, torch.Tensor)
    if annotation in _SIMPLE_TYPES:
        if annotation is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if annotation is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, annotation)
    return None


def _resolve_annotations(target: Any) -> dict[str, Any]:
    try:
        fn = target.__init__ if inspect.isclass(target) else target
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: skip type checks, keep name checks
        return {}


def check_targets(node: Any, key: str = "") -> None:
    """Check every ``_target_`` node against its callable's signature: the signature is the schema.

    A misspelled key (``model.net.widht_mult``) or a value of the wrong simple type
    (``data.batch_size=abc``) fails here, at start-up, naming the full key; nothing is
    written twice (no dataclass duplicating each constructor).
    """
    from hydra.utils import get_object

    if isinstance(node, DictConfig):
        target_name = node.get("_target_") if "_target_" in node else None
        if target_name is not None:
            try:
                target = get_object(str(target_name))
            except Exception as err:
                raise ConfigError(f"{key or 'config'}._target_={target_name!r} cannot be imported ({err})") from None
            try:
                params = inspect.signature(target).parameters
            except (TypeError, ValueError):
                params = {}
            takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            hints = _resolve_annotations(target) if params else {}
            for name in node:
                name = str(name)
                if name.startswith("_"):
                    continue
                full = f"{key}.{name}" if key else name
                if params and name not in params and not takes_kwargs:
                    choices = ", ".join(p for p in params if p not in ("self", "args", "kwargs"))
                    raise ConfigError(f"unknown key {full}: {target_name} takes {choices}")
                if name in params and not OmegaConf.is_missing(node, name):
                    try:
                        value = OmegaConf.select(node, name, throw_on_missing=False)
                    except InterpolationResolutionError:  # points at a ??? key: nothing to type-check
                        continue
                    if not OmegaConf.is_config(value) and _accepts(hints.get(name, params[name].annotation), value) is False:
                        raise ConfigError(
                            f"{full}={value!r} has the wrong type: {target_name} expects {hints.get(name, params[name].annotation)}"
                        )
        for name in node:
            if not str(name).startswith("_") and not OmegaConf.is_missing(node, name):
                child = node._get_node(name)
                if isinstance(child, (DictConfig, ListConfig)):
                    check_targets(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            check_targets(child, f"{key}[{i}]")


def check_model_output(system: pl.LightningModule, cfg: DictConfig) -> None:
    """Run the network once on a zero input of ``data.input_size`` and check the output size.

    Catches a model whose scale does not match the data (``data.output_size``) before
    any data is read; costs one forward pass of one image.
    """
    r, s = int(cfg.data.input_size), int(cfg.data.output_size)
    batch = {"l_lowres": torch.zeros(1, 1, r, r), "l_highres": torch.zeros(1, 1, s, s)}
    was_training = system.training
    system.eval()
    try:
        with torch.no_grad():
            ab = system.infer(batch)["ab"]
    except Exception as err:
        raise ConfigError(f"model '{cfg.model.get('net', {}).get('_target_', cfg.model._target_)}' cannot take a {r}x{r} input "
                          f"(data.input_size={r}): {err}") from err
    finally:
        system.train(was_training)
    if tuple(ab.shape) != (1, 2, s, s):
        raise ConfigError(
            f"model output {tuple(ab.shape)[1:]} does not match data.output_size={s} (expected (2, {s}, {s})) "
            f"for data.input_size={r}"
        )


def runs_on_cuda(cfg: DictConfig) -> bool:
    """Whether the configured trainer will run on CUDA GPUs here (``trainer.accelerator``)."""
    from joint_colsr.run.resolvers import on_gpu

    return bool(torch.cuda.is_available() and on_gpu(select(cfg, "trainer.accelerator") or "auto", True, False))


def probe_deterministic(net: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device | str) -> None:
    """One forward and backward of a copy of ``net`` on ``device`` with
    ``torch.use_deterministic_algorithms(True)``; a ``ConfigError`` names the first op that has
    no deterministic kernel there, and the fix. The process-wide setting is restored."""
    import copy
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what Lightning sets for deterministic=true
    was, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    probe = copy.deepcopy(net).to(device).train()
    torch.use_deterministic_algorithms(True)
    try:
        inputs = {k: v.to(device) for k, v in batch.items()}
        kwargs = {"l_highres": inputs["l_highres"]} if getattr(probe, "needs_l_highres", False) else {}
        out = probe(inputs["l_lowres"], **kwargs)
        out = out["ab"] if isinstance(out, dict) else out
        out.float().square().mean().backward()
    except RuntimeError as err:
        if "deterministic" not in str(err):
            raise
        op = str(err).split(" does not have a deterministic implementation")[0].strip()
        raise ConfigError(
            f"trainer.deterministic=true cannot run this model on {torch.device(device).type}: {op} has no deterministic "
            "kernel there (bilinear/bicubic upsampling and adaptive/area pooling on the gradient path have none on CUDA). "
            "Fix: trainer.deterministic=warn (the same kernels, a warning; runs then differ in the last bits), or a "
            "net that upsamples with nearest or pixel shuffle (e.g. model.net.upsample_mode=nearest)."
        ) from None
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        del probe


def check_deterministic(system: pl.LightningModule, cfg: DictConfig) -> None:
    """With ``trainer.deterministic=true`` on CUDA, fail at start-up (not mid-epoch) when an op
    of the net has no deterministic CUDA kernel (:func:`probe_deterministic`). Else nothing."""
    if select(cfg, "trainer.deterministic") is not True or not runs_on_cuda(cfg):
        return
    r, s = int(cfg.data.input_size), int(cfg.data.output_size)
    batch = {"l_lowres": torch.rand(2, 1, r, r) * 2 - 1, "l_highres": torch.rand(2, 1, s, s) * 2 - 1}
    probe_deterministic(system.net, batch, "cuda")


def cache_only(cfg: DictConfig) -> bool:
    """``data.cache`` is set and ``data.root`` is not: train from the cache alone."""
    data = cfg.get("data")
    # (`"root" in data` is False for a ??? value: OmegaConf hides missing keys from `in`.)
    return bool(data is not None and "root" in data.keys() and OmegaConf.is_missing(data, "root") and data.get("cache"))

