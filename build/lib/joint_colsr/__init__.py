"""joint_colsr: one network for image colorization and super-resolution together."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree (``conf/`` beside the package; installs are editable). Absolute, so
#: the entry points work both as ``python -m joint_colsr.X`` and as ``joint-colsr-X``
#: commands (Hydra would look for a ``conf`` Python package given a relative path there).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

try:  # the configs' resolvers (omegaconf is a dependency; a bare GPU node may still lack it)
    from joint_colsr.resolvers import register as _register_resolvers

    _register_resolvers()
except ImportError:  # pragma: no cover - reported by the entry point that needs it
    pass
