"""LightningModules: how networks are trained (losses, optimizers, logging)."""

from joint_colsr.systems.colsr import ColSRSystem
from joint_colsr.systems.gan import GANSystem

__all__ = ["ColSRSystem", "GANSystem"]
