"""Find the host reads of device values that make a GPU training loop wait (host syncs).

On CUDA, reading a value back (``.item()``, ``bool(t)``, ``.cpu()``...) or building a tensor
from Python data on the device (``torch.tensor([...], device=cuda)``, a pageable host copy)
blocks the host until the device has caught up. Once per step, that leaves the host's own
work of the step (hooks, a few hundred kernel launches) unoverlapped with the device's.

:class:`HostReadRecorder` finds them on any device, a CPU included: it records every call
that *would* block on CUDA, with the training step it happened in and where it came from.
The optimizer's own code is left out: torch's optimizers keep their step counters on the
CPU (``capturable=False``) and read them there, which costs no sync on a GPU.
:class:`SyncDebug` is the GPU-side check (``speed.sync_debug=warn|error``): CUDA's own sync
debug mode over the training batches that should not sync.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

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
#: Factories that copy Python data to the device when given one (a blocking pageable copy on CUDA).
FACTORIES = {torch.tensor: "tensor", torch.as_tensor: "as_tensor"}

@dataclass
class HostRead:
    """One recorded call: what, in which step (``step`` as the caller's ``step_of`` said), from where."""

    call: str
    step: int
    where: str


@dataclass
class HostReadRecorder(TorchFunctionMode):
    """A ``TorchFunctionMode`` that records host reads and device tensor factories.

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
        name = HOST_READS.get(func)
        if name is None and func in FACTORIES and kwargs.get("device") is not None:
            name = f"{FACTORIES[func]}(..., device=...)"
        if name is not None:
            caller = _caller()
            if not (self.skip_optimizer_internals and caller.startswith("torch/optim/")):
                self.reads.append(HostRead(name, self.step_of() if self.step_of else -1, caller))
        return func(*args, **kwargs)

    def per_step(self) -> dict[int, list[HostRead]]:
        """The recorded calls grouped by step."""
        steps: dict[int, list[HostRead]] = {}
        for read in self.reads:
            steps.setdefault(read.step, []).append(read)
        return steps


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


class SyncDebug(Callback):
    """``speed.sync_debug=warn|error``: CUDA's sync debug mode over the training batches that
    should make no host sync (all but the first and the logging batches), from the batch's
    start to its end (forward, backward, optimizer step, the callbacks' batch hooks).

    ``warn`` prints a warning with a stack at each synchronizing CUDA call; ``error`` raises
    there. Without CUDA it does nothing (it says so once). Start-up, logging steps, validation
    and checkpoints read values on purpose and run with the mode off.
    """

    def __init__(self, mode: str = "warn") -> None:
        if mode not in ("warn", "error"):
            raise ValueError(f"speed.sync_debug must be null, warn or error, got {mode!r}")
        self.mode = mode
        self._active = False
        self._batches = 0  # training batches started in this fit (a resumed run's first one too reads state back)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._batches = 0
        if not torch.cuda.is_available():
            log.warning("speed.sync_debug=%s does nothing without CUDA (use tests/run/test_host_syncs.py's recorder on CPU)", self.mode)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._batches += 1
        if torch.cuda.is_available() and self._batches > 1 and not is_logging_batch(trainer):
            torch.cuda.set_sync_debug_mode(self.mode)
            self._active = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._active:
            torch.cuda.set_sync_debug_mode(0)
            self._active = False

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_train_batch_end(trainer, pl_module, None, None, 0)
