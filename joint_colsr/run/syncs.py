"""Find the host reads of device values that make a GPU training loop wait (host syncs).

On CUDA, reading a value back (``.item()``, ``bool(t)``, ``.cpu()``...), an output whose
size depends on values (``nonzero``, a boolean-mask index), a solver that checks its result
(``torch.linalg.solve``, ``inv``, ``cholesky``), building a tensor from Python data on the
device (``torch.tensor([...], device=cuda)``), or copying pageable (unpinned) host memory to
the device blocks the host until the device has caught up. Once
per step, that leaves the host's own work of the step (hooks, a few hundred kernel launches)
unoverlapped with the device's.

**The window.** Both checks below look at whole iterations of Lightning's training loop
(:func:`hook_training_iterations` brackets ``trainer.fit_loop.epoch_loop.advance``): one
iteration fetches the next batch (the loader's ``__next__`` and, without workers, the
dataset and collate on the main process), moves the current one to the device
(``batch_to_device``, pinned or not), runs ``on_after_batch_transfer`` (LAB conversion,
crops and flips), the ``on_train_batch_start`` hooks, the step (forward, backward,
optimizer), the ``on_train_batch_end`` hooks, and Lightning's logging after them
(``update_train_step_metrics``: where a ``prog_bar`` value would be read back every batch).

:class:`HostReadRecorder` finds them on any device, a CPU included: it records every call
that *would* block on CUDA, with the iteration it happened in and where it came from.
The optimizer's own code is left out: torch's optimizers keep their step counters on the
CPU (``capturable=False``) and read them there, which costs no sync on a GPU. Code that
syncs on purpose (the DDP SIGTERM broadcast after a logging step, a checkpoint save) runs in
:func:`deliberate_sync`: the recorder marks its reads, :class:`SyncDebug` pauses there.
:class:`SyncDebug` is the GPU-side check (``speed.sync_debug=warn|error``): CUDA's own sync
debug mode over the iterations that should not sync, plus a check that the batch it moves
to the GPU is pinned.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from lightning.pytorch import Callback
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

#: Tensor methods that read a device value back to the host (each one a sync on CUDA).
HOST_READS = {
    torch.Tensor.item: "item",
    torch.Tensor.__bool__: "__bool__",
    torch.Tensor.__int__: "__int__",
    torch.Tensor.__float__: "__float__",
    torch.Tensor.__index__: "__index__",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.cpu: "cpu",
}
#: Calls whose output size or error check the host must read on CUDA (a sync each): ``nonzero``
#: and ``masked_select`` (as a boolean-mask index: :func:`_bool_index`), and the linear-algebra
#: solvers that check their result (their ``*_ex`` forms do not).
SIZE_OR_CHECK_READS = {
    torch.nonzero: "nonzero", torch.Tensor.nonzero: "nonzero",
    torch.masked_select: "masked_select", torch.Tensor.masked_select: "masked_select",
    torch.linalg.solve: "linalg.solve", torch.linalg.inv: "linalg.inv", torch.linalg.cholesky: "linalg.cholesky",
}
#: Factories that copy Python data to the device when given one (a blocking pageable copy on CUDA).
FACTORIES = {torch.tensor: "tensor", torch.as_tensor: "as_tensor"}
#: Tensor methods that copy between devices (:func:`blocking_copy` says which copies block).
COPIES = {torch.Tensor.to: "to", torch.Tensor.cuda: "cuda", torch.Tensor.copy_: "copy_"}

#: Where the sync debug mode is set (``torch.cuda``; tests put a stand-in here to run SyncDebug on a CPU).
_cuda: Any = torch.cuda

#: ``.reasons``: the :func:`deliberate_sync` blocks this thread is in (innermost last).
_DELIBERATE = threading.local()


def _deliberate_reasons() -> list[str]:
    if not hasattr(_DELIBERATE, "reasons"):
        _DELIBERATE.reasons = []
    return _DELIBERATE.reasons


@contextmanager
def deliberate_sync(reason: str) -> Iterator[None]:
    """Run a block that syncs on purpose (``reason`` says why): :class:`HostReadRecorder`
    records its reads with ``deliberate=reason``, and CUDA's sync debug mode (if
    :class:`SyncDebug` turned it on) is off inside and restored after."""
    mode = _cuda.get_sync_debug_mode() if _cuda.is_available() else 0
    if mode:
        _cuda.set_sync_debug_mode(0)
    reasons = _deliberate_reasons()
    reasons.append(reason)
    try:
        yield
    finally:
        reasons.pop()
        if mode:
            _cuda.set_sync_debug_mode(mode)


def blocking_copy(src: torch.Tensor, dst: torch.device | str | None, non_blocking: bool) -> str | None:
    """How a copy of ``src`` to device ``dst`` makes the host wait on an accelerator, or ``None``.

    - host (CPU) to another device from pageable memory: ``"pageable host-to-device copy"``
      (the driver stages it through a pinned buffer, with the host waiting, whatever
      ``non_blocking`` says);
    - from pinned memory with ``non_blocking=False``: ``"blocking host-to-device copy"``;
    - another device to the host: ``"device-to-host copy"`` (a read);
    - the same device, device to device, ``dst=None`` (a dtype change), or pinned memory with
      ``non_blocking=True``: ``None``.
    """
    if dst is None:
        return None
    dst = torch.device(dst)
    from_host, to_host = src.device.type == "cpu", dst.type == "cpu"
    if from_host == to_host:
        return None
    if to_host:
        return "device-to-host copy"
    if not src.is_pinned():
        return "pageable host-to-device copy"
    return None if non_blocking else "blocking host-to-device copy"


def _copy_call(func: Any, args: tuple, kwargs: dict) -> str | None:
    """:func:`blocking_copy`'s verdict on a call of ``Tensor.to``, ``.cuda`` or ``.copy_``, named."""
    if func is torch.Tensor.copy_:
        dst, src = args[0], (args[1] if len(args) > 1 else kwargs.get("src"))
        non_blocking = bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        kind = blocking_copy(src, dst.device, non_blocking) if isinstance(src, torch.Tensor) else None
    elif func is torch.Tensor.cuda:
        device = args[1] if len(args) > 1 else kwargs.get("device")
        device = torch.device("cuda" if device is None else device if not isinstance(device, int) else f"cuda:{device}")
        non_blocking = bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        kind = blocking_copy(args[0], device, non_blocking)
    else:  # Tensor.to(device | dtype | tensor, ..., non_blocking=..., copy=...): parsed as torch parses it
        rest, named = list(args[1:]), {k: v for k, v in kwargs.items() if k != "copy"}  # the parser refuses `copy`
        try:
            device, _, non_blocking, _ = torch._C._nn._parse_to(*rest, **named)
        except RuntimeError:  # `copy` given positionally: always the last positional argument
            device, _, non_blocking, _ = torch._C._nn._parse_to(*rest[:-1], **named)
        kind = blocking_copy(args[0], device, non_blocking)
    return None if kind is None else f"{COPIES[func]}: {kind}"


@dataclass
class HostRead:
    """One recorded call: what, in which step (``step`` as the caller's ``step_of`` said), from
    where, and the reason of the :func:`deliberate_sync` block it ran in (``None``: none)."""

    call: str
    step: int
    where: str
    deliberate: str | None = None


@dataclass
class HostReadRecorder(TorchFunctionMode):
    """A ``TorchFunctionMode`` that records host reads, device tensor factories, and copies
    between the host and another device that block (:func:`blocking_copy`).

    It models a CPU run as a GPU one for reads: every ``.item()``, ``bool(t)``... counts, as
    if the tensor were on the accelerator. Copies count only when they really cross devices:
    on a CPU-only run Lightning's batch transfer is CPU to CPU, so the pinning of the batch
    is seen by :class:`SyncDebug` on a GPU, not here. Torch function modes are per thread:
    a loader's background threads and worker processes are not recorded (they do not block
    the training loop's thread).

    Args:
        step_of: returns the current step number (e.g. ``lambda: trainer.global_step``); -1 if unset.
        skip_optimizer_internals: leave out calls made by ``torch.optim`` itself (its CPU step
            counters). Only the optimizer's own code is left out: Lightning runs the training
            step and backward *inside* ``optimizer.step(closure)``, and those count.

    Use as a context manager; :attr:`reads` holds the calls in order.
    """

    step_of: Callable[[], int] | None = None
    skip_optimizer_internals: bool = True
    reads: list[HostRead] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = HOST_READS.get(func) or SIZE_OR_CHECK_READS.get(func)
        if name is None and func is torch.Tensor.__getitem__ and _bool_index(args[1] if len(args) > 1 else None):
            name = "__getitem__(bool mask)"
        if name is None and func in FACTORIES and kwargs.get("device") is not None:
            name = f"{FACTORIES[func]}(..., device=...)"
        if name is None and func in COPIES:
            name = _copy_call(func, args, kwargs)
        if name is not None:
            caller = _caller()
            if not (self.skip_optimizer_internals and caller.startswith("torch/optim/")):
                reasons = _deliberate_reasons()
                deliberate = reasons[-1] if reasons else None
                self.reads.append(HostRead(name, self.step_of() if self.step_of else -1, caller, deliberate))
        return func(*args, **kwargs)

    def per_step(self) -> dict[int, list[HostRead]]:
        """The recorded calls grouped by step."""
        steps: dict[int, list[HostRead]] = {}
        for read in self.reads:
            steps.setdefault(read.step, []).append(read)
        return steps


def _bool_index(index: Any) -> bool:
    """Whether an index holds a boolean tensor (its result's size is the mask's count: a host read on CUDA)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


#: Frames that only pass a call on (torch's dispatch to modes, Tensor's Python dunders).
_PASS_THROUGH = ("torch/overrides.py", "torch/_tensor.py", "torch/utils/_device.py", "joint_colsr/run/syncs.py")


def _caller() -> str:
    """``path:line function`` of the code that made the call (path from ``torch/`` or the last 3 parts)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if not path.endswith(_PASS_THROUGH):
            break
        frame = frame.f_back
    if frame is None:
        return "?"
    parts = path.split("/")
    short = "/".join(parts[parts.index("torch"):]) if "torch" in parts else "/".join(parts[-3:])
    return f"{short}:{frame.f_lineno} {frame.f_code.co_name}"


def is_logging_batch(trainer: Any) -> bool:
    """Whether Lightning reads the logged values back after this training batch (every
    ``trainer.log_every_n_steps`` optimizer steps; Lightning's own test)."""
    return bool(trainer._logger_connector.should_update_logs)


def logs_after(trainer: Any, batches_stepped: int, every: int | None = None) -> bool:
    """Whether Lightning logs (and so reads values back) after the training batch that brings
    the loop's count of stepped batches to ``batches_stepped``: every ``every`` batches,
    ``trainer.log_every_n_steps`` unless given. A count alone, the same on every DDP rank."""
    every = every or max(1, int(trainer.log_every_n_steps or 1))
    return batches_stepped % every == 0


class _IterationHook:
    """The epoch loop's ``advance`` (one training-loop iteration) with ``start(trainer)`` run
    before it and ``end(trainer)`` after it, also when it raises (``StopIteration`` at an
    epoch's end included). A class, not a closure: ``ddp_spawn`` pickles the trainer."""

    def __init__(self, trainer: Any, inner: Callable[..., Any], start: Callable[[Any], None], end: Callable[[Any], None]) -> None:
        self.trainer, self.inner, self.start, self.end = trainer, inner, start, end

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.start(self.trainer)
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.end(self.trainer)


def hook_training_iterations(trainer: Any, start: Callable[[Any], None], end: Callable[[Any], None]) -> Callable[[], None]:
    """Run ``start(trainer)`` at the start of each iteration of the training loop and
    ``end(trainer)`` at its end; returns the function that undoes it.

    An iteration is one call of ``trainer.fit_loop.epoch_loop.advance`` (replaced on the
    loop instance, as Lightning looks it up there): in Lightning 2.x it fetches the next
    batch, moves the current one to the device and runs ``on_after_batch_transfer``, the
    ``on_train_batch_start`` hooks, the training step, the ``on_train_batch_end`` hooks and
    Lightning's logging of the step (its host reads at logging steps). What follows in
    ``on_advance_end`` (validation when due, plateau schedulers, logger flushes) is outside.
    Hooks installed by several callers nest; each undo removes its own hook from the chain.
    """
    loop = trainer.fit_loop.epoch_loop
    hook = _IterationHook(trainer, loop.advance, start, end)
    loop.advance = hook

    def undo() -> None:
        top = loop.__dict__.get("advance")
        if top is hook:
            if isinstance(hook.inner, _IterationHook):
                loop.advance = hook.inner
            else:
                del loop.advance  # back to the class's method
            return
        while isinstance(top, _IterationHook):
            if top.inner is hook:
                top.inner = hook.inner
                return
            top = top.inner
    return undo


def pinned_batch_problems(batch: Any, device: torch.device) -> list[str]:
    """The tensors of ``batch`` (nested dicts, lists, tuples) whose copy to ``device`` would
    block the host (:func:`blocking_copy` with ``non_blocking=True``, as Lightning moves
    batches to accelerators), as ``"key: kind"``."""
    found: list[str] = []

    def visit(value: Any, key: str) -> None:
        if isinstance(value, torch.Tensor):
            kind = blocking_copy(value, device, non_blocking=True)
            if kind is not None:
                found.append(f"{key or 'batch'}: {kind}")
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{key}[{i}]")

    visit(batch, "")
    return found


class _CheckedTransfer:
    """The strategy's ``batch_to_device``, after :class:`SyncDebug` checked that the batch is
    pinned (CUDA's sync debug mode does not flag a ``non_blocking`` copy from pageable memory)."""

    def __init__(self, callback: "SyncDebug", trainer: Any, inner: Callable[..., Any]) -> None:
        self.callback, self.trainer, self.inner = callback, trainer, inner

    def __call__(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if self.callback._active and self.trainer.training:
            problems = pinned_batch_problems(batch, self.trainer.strategy.root_device)
            if problems:
                self.callback.report(f"the training batch is copied to the device from pageable memory ({', '.join(problems)}): "
                                     "each such copy makes the host wait; pin the loader's buffers (data.pin_memory=true)")
        return self.inner(batch, *args, **kwargs)


class _Deliberate:
    """``fn`` run inside :func:`deliberate_sync` (``trainer.save_checkpoint`` under :class:`SyncDebug`)."""

    def __init__(self, fn: Callable[..., Any], reason: str) -> None:
        self.fn, self.reason = fn, reason

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with deliberate_sync(self.reason):
            return self.fn(*args, **kwargs)


class SyncDebug(Callback):
    """``speed.sync_debug=warn|error``: CUDA's sync debug mode over the training-loop
    iterations that should make no host sync (all but the first of a fit and the logging
    ones), each from its fetch to Lightning's logging after ``on_train_batch_end``
    (:func:`hook_training_iterations`), plus a check that the batch moved to the GPU in those
    iterations is pinned (a ``non_blocking`` copy from pageable memory blocks too, and CUDA's
    mode does not see it).

    ``warn`` prints a warning with a stack at each synchronizing CUDA call; ``error`` raises
    there. Without CUDA it does nothing (it says so once). Start-up, logging steps,
    validation, checkpoint saves and :func:`deliberate_sync` blocks (the DDP SIGTERM
    broadcast after a logging step) read values on purpose and run with the mode off.
    """

    def __init__(self, mode: str = "warn") -> None:
        if mode not in ("warn", "error"):
            raise ValueError(f"speed.sync_debug must be null, warn or error, got {mode!r}")
        self.mode = mode
        self._active = False
        self._iterations = 0  # training-loop iterations started in this fit (a resumed run's first one too reads state back)
        #: Iterations run with the checks on, in this fit.
        self.checked_iterations = 0
        self._undo: list[Callable[[], None]] = []

    def report(self, message: str) -> None:
        """A sync found outside CUDA's own mode: raised (``error``) or a ``UserWarning``
        (``warn``), as CUDA's mode does, worded as its warnings are ("synchronizing CUDA
        operation": ``make gpu-check`` counts them)."""
        if self.mode == "error":
            raise RuntimeError(f"speed.sync_debug=error: a synchronizing CUDA operation: {message}")
        warnings.warn(f"speed.sync_debug: a synchronizing CUDA operation: {message}", stacklevel=2)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._iterations = self.checked_iterations = 0
        if not _cuda.is_available():
            log.warning("speed.sync_debug=%s does nothing without CUDA (use tests/run/test_host_syncs.py's recorder on CPU)", self.mode)
            return
        self._undo.append(hook_training_iterations(trainer, self._start, self._end))
        strategy = trainer.strategy
        strategy.batch_to_device = _CheckedTransfer(self, trainer, strategy.batch_to_device)
        trainer.save_checkpoint = _Deliberate(trainer.save_checkpoint, "checkpoint save")
        self._undo.append(lambda: (strategy.__dict__.pop("batch_to_device", None), trainer.__dict__.pop("save_checkpoint", None)))

    def _start(self, trainer: Any) -> None:
        self._iterations += 1
        if self._iterations > 1 and not is_logging_batch(trainer):
            _cuda.set_sync_debug_mode(self.mode)
            self._active = True
            self.checked_iterations += 1

    def _end(self, trainer: Any) -> None:
        if self._active:
            _cuda.set_sync_debug_mode(0)
            self._active = False

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(trainer)
        while self._undo:
            self._undo.pop()()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)
