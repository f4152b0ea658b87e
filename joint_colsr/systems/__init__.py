"""LightningModules: how networks are trained (losses, optimizers, logging)."""

from joint_colsr.systems.colsr import ColSRSystem

__all__ = ["ColSRSystem"]
