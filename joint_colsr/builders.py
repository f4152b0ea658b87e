"""One builder that turns a composed config into (datamodule, system, callbacks, loggers, trainer).

``train``, ``eval``, ``predict`` and ``bench`` all build through here, so nothing is
instantiated twice in two ways. :func:`check_config` runs first and catches what can be
caught before any data is read.
"""

from __future__ import annotations

import copy
import inspect
import logging
import types
import typing
from pathlib import Path
from typing import Any, Union

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as _hydra_instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

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
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
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
    if missing == ["root"] and _cache_only(cfg):
        missing = []  # a decoded-image cache holds everything training reads
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
    matmul = _get(cfg, "speed.float32_matmul_precision")
    if matmul not in (None, "highest", "high", "medium"):
        raise ConfigError(f"speed.float32_matmul_precision must be null, highest, high or medium, got {matmul!r}")
    if _get(cfg, "speed.sync_debug") not in (None, "warn", "error"):
        raise ConfigError(f"speed.sync_debug must be null, warn or error, got {_get(cfg, 'speed.sync_debug')!r}")
    mode = _get(cfg, "speed.compile_mode")
    if mode not in COMPILE_MODES:
        raise ConfigError(f"speed.compile_mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    if _get(cfg, "trainer.use_distributed_sampler"):
        raise ConfigError("trainer.use_distributed_sampler must stay false: the data module shards each epoch itself")
    for group in ("data", "model", "trainer", "callbacks", "logger"):
        if _get(cfg, group) is not None:
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


def start_run(cfg: DictConfig) -> Path:
    """Seed everything (``seed: null`` leaves it to chance), apply process-wide speed settings,
    and create the run directory."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if _get(cfg, "speed.float32_matmul_precision"):
        torch.set_float32_matmul_precision(_get(cfg, "speed.float32_matmul_precision"))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain data, interpolations resolved (Hydra's own node left out)."""
    if _cache_only(cfg):  # data.root is ??? and unused: record it as null
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.data.root = None
    return {str(k): OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items() if k != "hydra"}


def _cache_only(cfg: DictConfig) -> bool:
    """``data.cache`` is set and ``data.root`` is not: train from the cache alone."""
    data = cfg.get("data")
    # (`"root" in data` is False for a ??? value: OmegaConf hides missing keys from `in`.)
    return bool(data is not None and "root" in data.keys() and OmegaConf.is_missing(data, "root") and data.get("cache"))


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    if _cache_only(cfg):
        # No photo folder: the source (which would list it) is not built; the cache's own
        # index describes the photos, their split and their labels.
        datamodule = instantiate(cfg.data, source=None, root=None, _convert_="partial")
    else:
        datamodule = instantiate(cfg.data, _convert_="partial")
    if _get(cfg, "speed.compile") and hasattr(datamodule, "compile_lab_conversion"):
        datamodule.compile_lab_conversion = True  # the LAB conversion on the device fuses too
    return datamodule


def build_system(cfg: DictConfig, startup_checks: bool = False) -> pl.LightningModule:
    """The configured LightningModule; ``startup_checks`` runs :func:`check_model_output` and
    :func:`check_deterministic` on the plain net first.

    With ``speed.compile`` the net is compiled last, with static shapes (``dynamic=False``):
    the checks run the plain net, so the training graph is compiled once, for the
    training batch (an eval graph is compiled for validation; a different batch size, such as
    a last partial validation batch, compiles its own static graph once).
    """
    # Not recursive: the system receives the net/optimizer *configs* and builds them itself.
    system = instantiate(cfg.model, _recursive_=False)
    if _get(cfg, "speed.channels_last"):
        # Also done by the ChannelsLast callback (which converts the batches) at setup; here it
        # covers systems used without a Trainer.
        system.to(memory_format=torch.channels_last)
    if startup_checks:
        check_model_output(system, cfg)
        check_deterministic(system, cfg)
    if _get(cfg, "speed.compile"):
        # In place (nn.Module.compile): parameter names and checkpoints stay those of the plain net.
        system.net.compile(mode=_get(cfg, "speed.compile_mode"), dynamic=False)
    return system


def runs_on_cuda(cfg: DictConfig) -> bool:
    """Whether the configured trainer will run on CUDA GPUs here (``trainer.accelerator``)."""
    from joint_colsr.resolvers import on_gpu

    return bool(torch.cuda.is_available() and on_gpu(_get(cfg, "trainer.accelerator") or "auto", True, False))


def probe_deterministic(net: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device | str) -> None:
    """One forward and backward of a copy of ``net`` on ``device`` with
    ``torch.use_deterministic_algorithms(True)``; a ``ConfigError`` names the first op that has
    no deterministic kernel there, and the fix. The process-wide setting is restored."""
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
    if _get(cfg, "trainer.deterministic") is not True or not runs_on_cuda(cfg):
        return
    r, s = int(cfg.data.input_size), int(cfg.data.output_size)
    batch = {"l_lowres": torch.rand(2, 1, r, r) * 2 - 1, "l_highres": torch.rand(2, 1, s, s) * 2 - 1}
    probe_deterministic(system.net, batch, "cuda")


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
    callbacks = _instantiate_group(_get(cfg, "callbacks"), "callbacks")
    if system is not None and getattr(system, "averages_own_weights", False):
        from lightning.pytorch.callbacks import WeightAveraging

        dropped = [type(c).__name__ for c in callbacks if isinstance(c, WeightAveraging)]
        if dropped:
            log.info("%s averages its own weights: leaving out %s", type(system).__name__, ", ".join(dropped))
        callbacks = [c for c in callbacks if not isinstance(c, WeightAveraging)]
    if _get(cfg, "speed.channels_last"):
        callbacks.append(ChannelsLast())
    if _get(cfg, "speed.sync_debug"):
        from joint_colsr.syncs import SyncDebug

        callbacks.append(SyncDebug(_get(cfg, "speed.sync_debug")))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return _instantiate_group(_get(cfg, "logger"), "logger")


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback] | None = None, loggers: list[Any] | None = None) -> pl.Trainer:
    callbacks = list(callbacks or [])
    if not loggers:
        # LearningRateMonitor refuses a Trainer without loggers; with logger=none it has nowhere to write anyway.
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    overrides: dict[str, Any] = {}
    if _get(cfg, "trainer.deterministic") is True and _get(cfg, "trainer.benchmark"):
        # cuDNN's autotuner picks kernels by timing (trainer=gpu turns it on): no determinism with it.
        log.info("trainer.deterministic=true: cuDNN autotuning (trainer.benchmark) turned off")
        overrides["benchmark"] = False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


# -- trained models and baselines for eval / predict ------------------------------------------

#: The system every checkpoint of this suite loads into unless its run says otherwise.
DEFAULT_SYSTEM = "joint_colsr.systems.ColSRSystem"


def _system_target(ckpt_path: Path, cfg: DictConfig | None) -> str:
    """Class of the system that wrote ``ckpt_path``: the training run's own config
    (``<run>/.hydra/config.yaml`` next to ``<run>/checkpoints/``) decides, then ``model._target_``."""
    for run_dir in (ckpt_path.parent.parent, ckpt_path.parent):
        saved = run_dir / ".hydra" / "config.yaml"
        if saved.is_file():
            target = OmegaConf.select(OmegaConf.load(saved), "model._target_", default=None)
            if target:
                return str(target)
    target = _get(cfg, "model._target_") if cfg is not None else None
    return str(target) if target else DEFAULT_SYSTEM


def build_eval_system(cfg: DictConfig) -> pl.LightningModule:
    """The model ``eval`` and ``predict`` run: ``ckpt_path=CKPT`` (any checkpoint of the suite;
    it rebuilds its own network from its hyper-parameters) or ``baseline=gray|bicubic``.

    The data sizes follow the model: ``data.input_size`` / ``data.output_size`` are set from
    the checkpoint's network (a warning names any value that changes).
    """
    from hydra.utils import get_class

    from joint_colsr.nets.baselines import BASELINES, baseline_net_config

    ckpt_path, baseline = _get(cfg, "ckpt_path"), _get(cfg, "baseline")
    if (ckpt_path is None) == (baseline is None):
        raise ConfigError(f"set exactly one of ckpt_path=CKPT or baseline={'|'.join(BASELINES)} "
                          f"(got ckpt_path={ckpt_path!r}, baseline={baseline!r})")
    in_size, out_size = _get(cfg, "data.input_size"), _get(cfg, "data.output_size")
    if baseline is not None:
        if baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        from joint_colsr.systems import ColSRSystem

        # The optimizer is never used: a baseline has no weights.
        return ColSRSystem(net=baseline_net_config(baseline, in_size or 96, out_size or 256),
                           optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}, scheduler=None)
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} is not a file")
    target = _system_target(path, cfg)
    try:
        system_class = get_class(target)
    except Exception as err:  # noqa: BLE001 - Hydra raises several kinds for an unknown target
        raise ConfigError(f"model._target_={target} (the system of {path}) cannot be imported: {err}") from None
    system = system_class.load_from_checkpoint(str(path), map_location="cpu")
    for key, current in (("input_size", in_size), ("output_size", out_size)):
        trained = model_size(system, key)
        if trained is None or _get(cfg, "data") is None:
            continue
        if current is not None and trained != int(current):
            log.warning("data.%s=%s -> %s: the checkpoint's network was trained at %s", key, current, trained, trained)
        with open_dict(cfg):
            cfg.data[key] = trained
    return system


def model_size(system: pl.LightningModule, key: str) -> int | None:
    """``input_size`` or ``output_size`` of a system's network (hyper-parameters, then the net)."""
    net_hparams = getattr(system, "hparams", {}).get("net") or {}
    value = net_hparams.get(key) if isinstance(net_hparams, dict) else None
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
