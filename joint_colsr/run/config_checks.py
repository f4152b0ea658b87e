"""Start-up checks of a composed config: everything that can fail before any data is read.

:func:`check_config` names the key and what was expected; :func:`check_targets` checks
every ``_target_`` node against its callable's signature; :func:`check_model_output` runs
the network once. :class:`ConfigError` is the one exception a wrong config raises: the
console commands print its message alone (no traceback; ``HYDRA_FULL_ERROR=1`` for one).
"""

from __future__ import annotations

import errno
import functools
import inspect
import linecache
import logging
import os
import signal
import sys
import threading
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
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

#: What a full or read-only disk, or a denied write, is called in one line (``errno`` -> words).
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exhausted",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}

#: Set by :func:`hydra_command` to the user's own ``HYDRA_FULL_ERROR`` (inherited by child processes).
_USER_FULL_ERROR = "JOINT_COLSR_USER_FULL_ERROR"


#: What survives a failed training run, said in every storage or worker error.
RESUME_NOTE = ("a training run resumes from its checkpoints/last.ckpt if one was saved, which is only ever "
               "replaced whole; else it starts over")


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, newest first."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)


def describe_error(err: BaseException) -> str | None:
    """One line for an error whose cause the user can fix without a traceback, else ``None``.

    A full or read-only disk (whatever library met it), a killed data-loading worker, and
    the config errors Hydra and OmegaConf raise (composition, interpolation) are named with
    what to do; a training run's ``checkpoints/last.ckpt`` is written atomically, so it
    survives all of them and the same command resumes.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for cause in _causes(err):
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
            where = f" writing {cause.filename}" if cause.filename else ""
            fix = ("choose a writable folder (hydra.run.dir=DIR, output_dir=DIR)" if cause.errno in (errno.EROFS, errno.EACCES)
                   else "free some space")
            return (f"{_STORAGE_ERRNOS[cause.errno]}{where}: {fix}, then run the same command again "
                    f"({RESUME_NOTE})")
        death = _loader_worker_death(cause)
        if death is not None:
            return (f"{death} (the kernel's out-of-memory killer, most often: lower data.num_workers or "
                    f"data.batch_size), then run the same command again ({RESUME_NOTE})")
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        text = " ".join(line.strip() for line in str(err).split("Config search path")[0].splitlines() if line.strip())
        return f"config: {text}"
    return None


def _loader_worker_death(err: BaseException) -> str | None:
    """What killed a data-loading worker, in torch's words, if ``err`` is how its death surfaced.

    torch reports a dead worker three ways, depending on when the main process notices:
    its SIGCHLD handler ("DataLoader worker (pid N) is killed by signal: Killed"), its
    queue check ("... exited unexpectedly"), or, when the worker dies between queuing a
    batch and handing over the batch's shared memory and is not yet reaped, the bare
    connection error of that handover. The last two name no signal: the iterator found
    in the traceback is asked how its workers ended (a killed process is reaped in
    milliseconds; each is waited for at most 5 s).
    """
    text = str(err).splitlines()[0].rstrip(". ") if str(err) else ""
    if isinstance(err, RuntimeError) and "DataLoader worker" in text and "killed by signal" in text:
        return text
    exited = isinstance(err, RuntimeError) and "DataLoader worker" in text and "exited unexpectedly" in text
    if not (exited or isinstance(err, (ConnectionError, EOFError))):
        return None
    iterator = _loader_iterator(err)
    handover = not exited and iterator is not None
    if not (exited or handover):
        return None
    ended = []
    for worker in getattr(iterator, "_workers", ()):
        worker.join(timeout=5)
        code = worker.exitcode
        if code is not None and code < 0 and -code != signal.SIGTERM:  # SIGTERM: the loader's own shutdown
            ended.append(f"DataLoader worker (pid {worker.pid}) is killed by signal: {signal.strsignal(-code)}")
        elif code is not None and code > 0:
            ended.append(f"DataLoader worker (pid {worker.pid}) exited with status {code}")
    if ended:
        return "; ".join(ended)
    return text if not handover else f"a DataLoader worker died while handing over a batch ({type(err).__name__}: {text})"


def _loader_iterator(err: BaseException) -> Any:
    """The multi-process DataLoader iterator whose method raised ``err`` or its cause (from their
    tracebacks), else ``None``."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    for cause in _causes(err):
        tb = cause.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, _MultiProcessingDataLoaderIter):
                return owner
            tb = tb.tb_next
    return None


def is_expected_error(err: BaseException) -> bool:
    """A :class:`ConfigError`, an error :func:`describe_error` can name, or one of
    :data:`_STATED_ERRORS` raised by a ``raise`` statement of this package (its message is
    the whole story). Anything raised inside a library, or of another type, is a bug or a
    surprise and keeps its traceback."""
    if isinstance(err, ConfigError) or describe_error(err) is not None:
        return True
    if not isinstance(err, _STATED_ERRORS) or err.__traceback__ is None:
        return False
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    package = Path(__file__).resolve().parents[1]  # by file: under `python -m`, the command's module is __main__
    if package not in Path(frame.f_code.co_filename).resolve().parents:
        return False
    return linecache.getline(frame.f_code.co_filename, tb.tb_lineno).strip().startswith("raise ")


def user_wants_traceback() -> bool:
    """The user set ``HYDRA_FULL_ERROR=1`` (before :func:`hydra_command` set it for Hydra)."""
    return os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def command(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a command's task function: third-party noise is dropped first
    (:mod:`joint_colsr.run.quiet`); errors propagate to :func:`hydra_command` (in a
    multirun, to Hydra, so the sweep summary records the failed job and the next job runs)."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        from joint_colsr.run.quiet import quiet_third_party_noise

        quiet_third_party_noise()  # the one place third-party noise is dropped (run/quiet.py)
        return task(cfg)

    return run


def hydra_command(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``@hydra.main`` for a console command, with one error policy for everything it runs.

    An expected error (:func:`is_expected_error`), whether raised by the task, by Hydra
    before the task (an unwritable run directory, a bad override) or by a multirun job,
    ends the process with one line on stderr and exit status 1; a bug keeps its traceback.
    ``HYDRA_FULL_ERROR=1`` shows every traceback.
    """
    import hydra

    from joint_colsr import CONFIG_DIR

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(command(task))

        @functools.wraps(task)
        def main() -> Any:
            os.environ.setdefault(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a trimmed traceback
            from joint_colsr.run.hydra_callbacks import StopBeforeRun

            try:
                try:
                    return hydra_main()
                except StopBeforeRun as stop:  # a Hydra callback refused the run before it wrote anything
                    raise stop.error from None
            except Exception as err:
                if user_wants_traceback():
                    raise
                _stop_loader_worker_watch()
                from joint_colsr.run import hydra_callbacks

                sweep = hydra_callbacks.CURRENT_SWEEP_DIR
                if sweep is None and not is_expected_error(err):
                    raise
                message = describe_error(err) or str(err)
                if config_name in ("eval", "predict") and "Could not override 'model'" in message:
                    message = (f"{config_name} takes no model=: it rebuilds the model a checkpoint was trained with "
                               "(ckpt_path=CKPT); drop model=")
                if sweep is not None:  # each failed job's traceback is in its error.txt; the summary lists them
                    message = (f"a sweep job failed ({type(err).__name__}: {message}); every failed job is listed in "
                               f"{sweep / hydra_callbacks.SUMMARY_MD}, its traceback in the job's error.txt")
                print(f"Error: {message}\n(the full traceback: HYDRA_FULL_ERROR=1)", file=sys.stderr)
                if any(_loader_worker_death(cause) for cause in _causes(err)):
                    _exit_now(1)
                raise SystemExit(1) from None

        return main

    return decorate


def _exit_now(code: int) -> None:
    """End the process after a data-loading worker died, without the interpreter's teardown:
    the dead worker's shared memory, freed during that teardown, can make torch warn after
    ``sys.stderr`` is closed, which aborts the process ("terminate called after throwing
    ... write to closed file", seen once in CI) after the one-line error. Logs are flushed
    first; checkpoints were written whole before. Inside a command run in-process
    (``run/in_process.py``) the caller's process goes on: a normal ``SystemExit``."""
    from joint_colsr.run.in_process import running_in_process

    if running_in_process():
        raise SystemExit(code) from None
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stop_loader_worker_watch() -> None:
    """Give SIGCHLD back to the default before exiting on an error: torch's DataLoader handler
    raises on any dead worker, and a second killed worker reaped during interpreter shutdown
    would otherwise print a traceback after the one-line error."""
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def select(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at the dotted ``key``; ``None`` where it is absent or ``???``."""
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


#: ``seed``'s range: what numpy's generator (seeded by Lightning's ``seed_everything``) takes.
MAX_SEED = 2**32 - 1
#: ``trainer.precision`` values Lightning 2 accepts (its ``_PRECISION_INPUT``), as written in a config.
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", "16", "bf16",
              "transformer-engine", "transformer-engine-float16")
#: The largest learning rate accepted: far above any useful one (a test diverges a run with 1e8),
#: safely below float32's overflow (3.4e38, which Adam's step reaches from lr ~ 3e37 on).
MAX_LR = 1e30


def _learning_rate_keys(cfg: DictConfig) -> list[str]:
    """The dotted keys of every ``lr`` of an optimizer in the ``model`` group."""
    model = select(cfg, "model")
    if not isinstance(model, DictConfig):
        return []
    return [f"model.{name}.lr" for name in model if "optimizer" in str(name) and isinstance(select(model, str(name)), DictConfig)
            and "lr" in model[name]]


def check_resolvable(cfg: DictConfig) -> None:
    """Every ``${...}`` of ``cfg`` resolves; else a :class:`ConfigError` naming the key. One
    that points at a ``???`` value is left to the checks that name the missing key."""
    from omegaconf.errors import InterpolationToMissingValueError, OmegaConfBaseException

    def walk(node: DictConfig | ListConfig) -> None:
        keys = range(len(node)) if isinstance(node, ListConfig) else [k for k in node if k != "hydra"]
        for key in keys:  # (not `hydra`, which a composed test config may carry: Hydra resolves its own)
            if OmegaConf.is_missing(node, key):
                continue
            try:
                value = node[key]
            except InterpolationToMissingValueError:
                continue
            except OmegaConfBaseException as err:
                where = getattr(err, "full_key", None) or str(key)
                raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
            if isinstance(value, (DictConfig, ListConfig)):
                walk(value)

    walk(cfg)


def _under_target(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` or one of its parents is a ``_target_`` node (:func:`check_targets` checks those)."""
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        node = select(cfg, ".".join(parts[:depth]))
        if isinstance(node, DictConfig) and "_target_" in node:
            return True
    return False


def check_added_keys(cfg: DictConfig) -> None:
    """A key added on the command line (``+key=value`` or ``++key=value``) that nothing reads
    fails, naming the closest known key: a misspelt ``+auto_resum=false`` would otherwise be
    ignored in silence. Keys inside a ``_target_`` node are left to :func:`check_targets`
    (the constructor's signature decides); config groups (``+experiment=X``) are not keys."""
    import difflib

    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from joint_colsr import CONFIG_DIR

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    task_overrides = list(hydra_cfg.overrides.task)
    parsed = OverridesParser.create().parse_overrides(task_overrides)
    suspects = [o for o in parsed if (o.is_add() or o.is_force_add()) and not (Path(CONFIG_DIR) / o.key_or_group).is_dir()
                and not _under_target(cfg, o.key_or_group)]
    if not suspects:
        return
    kept = [text for text, o in zip(task_overrides, parsed) if o not in suspects]
    base = compose(config_name=str(hydra_cfg.job.config_name), overrides=kept)
    for override in suspects:
        key = override.key_or_group
        if OmegaConf.select(base, key, default=None, throw_on_missing=False) is not None or OmegaConf.is_missing(base, key):
            continue  # ++key=value on a key the config has: an ordinary override
        parent_key, _, leaf = key.rpartition(".")
        parent = select(base, parent_key) if parent_key else base
        known = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {parent_key + '.' if parent_key else ''}{close[0]}?" if close else (
            f"{parent_key or 'the top level'} has {', '.join(known)}" if known else "nothing reads it")
        raise ConfigError(f"unknown key {key} (added with {override.input_line}): the {hydra_cfg.job.config_name} config has "
                          f"no such key and nothing reads it; {hint}")


def check_config(cfg: DictConfig, groups: tuple[str, ...] = ("data", "model", "trainer")) -> None:
    """Fail fast, naming the key, on configs that would fail later.

    ``groups``: the config groups the command needs (``eval`` takes its model from the
    checkpoint and needs no ``model`` group).
    """
    check_resolvable(cfg)
    check_added_keys(cfg)
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
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED} (numpy's range) or null, got {seed!r}")
    precision = select(cfg, "trainer.precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not a precision Lightning knows: pick one of {', '.join(PRECISIONS)}")
    for key in _learning_rate_keys(cfg):
        lr = select(cfg, key)
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not 0 < lr <= MAX_LR:
            raise ConfigError(f"{key}={lr!r} must be in (0, {MAX_LR:g}]: larger steps overflow float32 in the optimizer's "
                              "update (Adam divides it by a bias correction below 1)")
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
    if select(cfg, "data.scale_range") is not None and not getattr(getattr(system, "net", None), "any_scale", False):
        raise ConfigError(
            f"data.scale_range={list(select(cfg, 'data.scale_range'))} trains at a new scale every batch, and model "
            f"'{cfg.model.get('net', {}).get('_target_', cfg.model._target_)}' has one fixed scale: use "
            "model.net.upsampler=implicit (model=joint_paper or residual_joint), or data.scale_range=null")
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


def probe_deterministic(net: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device | str,
                        what: str = "model.net") -> None:
    """One forward and backward of a copy of ``net`` on ``device`` with
    ``torch.use_deterministic_algorithms(True)``; a ``ConfigError`` names the first op that has
    no deterministic kernel there, the module it is in (``what``), and the fix. The
    process-wide setting is restored. ``batch``: ``l_lowres`` (and ``l_highres``) for a
    network of the suite, or ``image`` for a module that judges images (a discriminator)."""
    import copy
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what Lightning sets for deterministic=true
    was, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    probe = copy.deepcopy(net).to(device).train()
    torch.use_deterministic_algorithms(True)
    try:
        inputs = {k: v.to(device) for k, v in batch.items()}
        if "image" in inputs:
            out = probe(inputs["image"])
        else:
            kwargs = {"l_highres": inputs["l_highres"]} if getattr(probe, "needs_l_highres", False) else {}
            if getattr(probe, "takes_exemplar", False):  # the exemplar path is on the gradient path too
                kwargs["exemplar"] = torch.rand(inputs["l_lowres"].shape[0], 3, *inputs["l_highres"].shape[-2:],
                                                device=inputs["l_lowres"].device) * 2 - 1
            out = probe(inputs["l_lowres"], **kwargs)
        out = out["ab"] if isinstance(out, dict) else out
        out.float().square().mean().backward()
    except RuntimeError as err:
        if "deterministic" not in str(err):
            raise
        op = str(err).split(" does not have a deterministic implementation")[0].strip()
        raise ConfigError(
            f"trainer.deterministic=true cannot run this model on {torch.device(device).type}: {op} (in {what}) has no "
            "deterministic kernel there (bilinear/bicubic upsampling and adaptive/area pooling on the gradient path have "
            "none on CUDA). Fix: trainer.deterministic=warn (the same kernels, a warning; runs then differ in the last "
            "bits), or a net that upsamples with nearest or pixel shuffle (e.g. model.net.upsample_mode=nearest)"
            + (", or an output size the discriminator's pool divides into equal bins (a multiple of 64 at the default "
               "4x4 pool: plain average pooling, deterministic)" if "discriminator" in what else "") + "."
        ) from None
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        del probe


def check_deterministic(system: pl.LightningModule, cfg: DictConfig) -> None:
    """With ``trainer.deterministic=true`` on CUDA, fail at start-up (not mid-epoch) when an op
    of a module the training step runs has no deterministic CUDA kernel (:func:`probe_deterministic`):
    the net, and a GAN's discriminator on images of the output size. Else nothing."""
    if select(cfg, "trainer.deterministic") is not True or not runs_on_cuda(cfg):
        return
    probe_training_modules(system, cfg, "cuda")


def probe_training_modules(system: pl.LightningModule, cfg: DictConfig, device: torch.device | str) -> None:
    """:func:`probe_deterministic` on every module a training step of ``system`` runs backward
    through: ``system.net`` and, when there is one, ``system.discriminator``."""
    r, s = int(cfg.data.input_size), int(cfg.data.output_size)
    batch = {"l_lowres": torch.rand(2, 1, r, r) * 2 - 1, "l_highres": torch.rand(2, 1, s, s) * 2 - 1}
    probe_deterministic(system.net, batch, device)
    discriminator = getattr(system, "discriminator", None)
    if discriminator is not None:
        channels = int(getattr(discriminator, "in_channels", 3))
        probe_deterministic(discriminator, {"image": torch.rand(2, channels, s, s) * 2 - 1}, device, "model.discriminator")


def cache_only(cfg: DictConfig) -> bool:
    """``data.cache`` is set and ``data.root`` is not: train from the cache alone."""
    data = cfg.get("data")
    # (`"root" in data` is False for a ??? value: OmegaConf hides missing keys from `in`.)
    return bool(data is not None and "root" in data.keys() and OmegaConf.is_missing(data, "root") and data.get("cache"))

