"""LightningModules: how networks are trained (losses, optimizers, logging), and loaded back from checkpoints."""

from joint_colsr.systems.colsr import ColSRSystem, eval_network, model_size, run_system
from joint_colsr.systems.gan import GANSystem

__all__ = ["ColSRSystem", "GANSystem", "eval_network", "model_size", "run_system"]
