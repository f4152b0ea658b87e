"""joint_colsr: one network for image colorization and super-resolution together."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree (``conf/`` beside the package; installs are editable). Absolute, so
#: the entry points work both as ``python -m joint_colsr.X`` and as ``joint-colsr-X``
#: commands (Hydra would look for a ``conf`` Python package given a relative path there).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

from joint_colsr.resolvers import register as _register_resolvers  # noqa: E402

_register_resolvers()
