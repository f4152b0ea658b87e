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


# -- the size of a SLURM job from the run's config (conf/hydra/launcher/slurm.yaml) ------------


def slurm_tasks_per_node(devices: Any, accelerator: Any = "auto") -> int:
    """``--ntasks-per-node`` for ``trainer.devices``: srun starts one process per device and
    Lightning requires the two to match. ``auto`` / ``-1`` on CPUs is one process; on GPUs
    it cannot be known on the submitting machine (often a login node without GPUs).

    Raises:
        ValueError: ``devices`` is ``auto`` / ``-1`` and the accelerator may be a GPU.
    """
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if text.lstrip("-").isdigit() and int(text) >= 1:
        return int(text)
    if str(accelerator) == "cpu":
        return 1
    raise ValueError(
        f"hydra/launcher=slurm: trainer.devices={devices} with trainer.accelerator={accelerator} cannot size the job: "
        "the GPUs of a compute node are not visible where the sweep is submitted. Set trainer.devices=N "
        "(the GPUs per node; SLURM then starts N tasks per node) or trainer.accelerator=cpu."
    )


def slurm_gpus_per_node(devices: Any, accelerator: Any = "auto") -> int | None:
    """``--gpus-per-node``: one per task, none when the trainer runs on CPUs."""
    if str(accelerator) == "cpu":
        return None
    return slurm_tasks_per_node(devices, accelerator)


def slurm_cpus_per_task(num_workers: Any) -> int:
    """``--cpus-per-task``: the training process plus one per data-loading worker."""
    return 1 + max(int(num_workers or 0), 0)


RESOLVERS = {
    "on_gpu": on_gpu,
    "slurm_tasks_per_node": slurm_tasks_per_node,
    "slurm_gpus_per_node": slurm_gpus_per_node,
    "slurm_cpus_per_task": slurm_cpus_per_task,
}


def register() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
