"""joint_colsr: one network for image colorization and super-resolution together."""

from pathlib import Path

__version__ = "0.1.0"


def _config_dir() -> str:
    """The Hydra config tree: ``joint_colsr/conf`` in a wheel or ``pip install .`` (the build
    maps the top-level ``conf/`` there), else ``conf/`` beside the package (a source checkout
    or an editable install). Absolute, so the entry points work both as ``python -m
    joint_colsr.X`` and as ``joint-colsr-X`` commands from any folder."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"joint_colsr's Hydra configs are missing: neither {package / 'conf'} nor {package.parent / 'conf'} "
                            "holds train.yaml (reinstall the package)")


#: The Hydra config tree (see :func:`_config_dir`).
CONFIG_DIR = _config_dir()

from joint_colsr.run.moved import install_aliases as _install_aliases

_install_aliases()  # class paths saved before a module moved still import (run/moved.py)

try:  # the configs' resolvers (omegaconf is a dependency; a bare GPU node may still lack it)
    from joint_colsr.run.resolvers import register as _register_resolvers

    _register_resolvers()
except ImportError:  # pragma: no cover - reported by the entry point that needs it
    pass
