"""OmegaConf resolvers the configs use (registered when :mod:`joint_colsr` is imported)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def on_gpu(accelerator: Any, gpu_value: Any, other_value: Any) -> Any:
    """``${on_gpu:${.accelerator},A,B}``: ``A`` when the trainer runs on CUDA GPUs, else ``B``.

    ``accelerator`` is Lightning's: ``gpu``/``cuda`` -> GPUs; ``auto`` -> GPUs when CUDA is
    available (as Lightning picks); anything else (``cpu``, ``mps``...) -> ``B``.
    """
    name = str(accelerator).lower()
    if name == "auto":
        import torch

        return gpu_value if torch.cuda.is_available() else other_value
    return gpu_value if name in ("gpu", "cuda") else other_value


def register() -> None:
    if not OmegaConf.has_resolver("on_gpu"):
        OmegaConf.register_new_resolver("on_gpu", on_gpu)
