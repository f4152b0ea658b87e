"""An exponential moving average (EMA) of a module's weights that never waits for the device.

Used by the :class:`~joint_colsr.run.callbacks.EMA` callback (every supervised model) and by
:class:`~joint_colsr.systems.gan.GANSystem` (its generator EMA), and by the raw loop of
``make bench`` so that both sides of ``lightning_vs_raw_loop`` average the same way.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


class EMAModel(AveragedModel):
    """``ema = decay * ema + (1 - decay) * current`` after each update, on the device, with no host read.

    A drop-in :class:`torch.optim.swa_utils.AveragedModel` (same ``state_dict``: ``module.*``
    and ``n_averaged``; same ``module`` attribute). Two differences, both for speed:

    - torch's ``update_parameters`` evaluates ``bool(self.n_averaged == 0)`` on every call, a
      device-to-host read that makes a GPU training loop wait for the device once per step.
      Here the count is also kept on the host (read back once after ``load_state_dict``).
    - Every floating tensor of one device and dtype is updated by a single fused
      ``torch._foreach_lerp_`` (what ``get_ema_multi_avg_fn`` does), not one small op per tensor.

    The first update copies the weights (as torch does: the average starts at the weights
    after the first optimizer step). Non-floating buffers (BatchNorm's ``num_batches_tracked``)
    are copied from the model: an average of a step counter means nothing.

    Args:
        model: the module to average; deep-copied.
        decay: weight of the old average, in [0, 1].
        device: where the average lives (default: where ``model`` is).
        use_buffers: average the buffers too (BatchNorm running statistics); otherwise they
            are copied from the model at each update.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | None = None, use_buffers: bool = True) -> None:
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        super().__init__(model, device=device, use_buffers=use_buffers)
        self.decay = float(decay)
        self._updates_on_host: int | None = 0  # None: unknown (just loaded); read once

    @torch.no_grad()
    def place_like(self, model: nn.Module) -> "EMAModel":
        """Put every averaged tensor on the device, and in the memory layout, of its counterpart in ``model``.

        For an average built before the model was placed (Lightning's ``setup`` runs before the
        strategy moves the module to its device): without this, every update copies each
        weight to where the average lives, with one blocking device-to-host copy per tensor,
        and mismatched layouts (channels-last weights) leave ``_foreach_lerp_`` off its fast path.
        Values are kept; returns ``self``.
        """
        own = list(itertools.chain(self.module.parameters(), self.module.buffers()))
        theirs = list(itertools.chain(model.parameters(), model.buffers()))
        if len(own) != len(theirs):
            raise ValueError(f"the model has {len(theirs)} tensors, the EMA copy {len(own)}: not the same architecture")
        if theirs:
            self.to(theirs[0].device)  # the module and n_averaged (a model on one device, as Lightning's are)
        for avg, cur in zip(own, theirs):
            if avg.stride() != cur.stride():
                avg.data = torch.empty_like(cur, dtype=avg.dtype).copy_(avg.data)
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._updates_on_host = None  # n_averaged came from the checkpoint

    def _tensors(self, module: nn.Module) -> list[Tensor]:
        if self.use_buffers:
            return [t.detach() for t in itertools.chain(module.parameters(), module.buffers())]
        return [p.detach() for p in module.parameters()]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self._updates_on_host is None:
            self._updates_on_host = int(self.n_averaged)  # the one host read, after a load
        averaged, current = self._tensors(self.module), self._tensors(model)
        if len(averaged) != len(current):
            raise ValueError(f"the model has {len(current)} tensors to average, the EMA copy {len(averaged)}: not the same architecture")
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        for avg, cur in zip(averaged, current):
            cur = cur.to(avg.device)  # a no-op on the same device; blocking otherwise (a device-to-host copy must land first)
            if self._updates_on_host == 0 or not avg.is_floating_point():
                avg.copy_(cur)
            else:
                group = groups.setdefault((avg.device, avg.dtype), ([], []))
                group[0].append(avg)
                group[1].append(cur.to(avg.dtype))
        for avgs, curs in groups.values():
            torch._foreach_lerp_(avgs, curs, 1.0 - self.decay)
        if not self.use_buffers:
            for avg, cur in zip(self.module.buffers(), model.buffers()):
                avg.detach().copy_(cur.detach())
        self.n_averaged += 1  # on the device: no wait
        self._updates_on_host += 1
