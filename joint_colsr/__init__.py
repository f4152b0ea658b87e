"""joint_colsr: one network for image colorization and super-resolution together."""

__version__ = "0.1.0"
