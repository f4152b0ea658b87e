"""LightningModules: how networks are trained (losses, optimizers, logging), and loaded back from checkpoints."""

from joint_colsr.systems.colsr import ColSRSystem, call_net, eval_network, model_size, run_system
from joint_colsr.systems.gan import GANSystem

__all__ = ["ColSRSystem", "GANSystem", "call_net", "eval_network", "model_size", "run_system"]
