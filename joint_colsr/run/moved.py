"""Module paths that moved, so runs written before a move still load, resume and evaluate.

Checkpoints (``run_config``, ``hyper_parameters``) and run directories (``.hydra/config.yaml``)
store class paths as strings (``_target_: joint_colsr.callbacks.EMA``). When a module moves,
:func:`upgrade_class_paths` rewrites such strings to the new path, and :func:`install_aliases`
lets ``import joint_colsr.callbacks`` (Hydra's ``_locate`` on an old config) find the module at
its new place, with a ``FutureWarning`` naming it. docs/architecture.md lists the moves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

#: old module path -> new module path (the 2026-12 layout: run/ and ops/, issue 21).
MOVED: dict[str, str] = {
    **{f"joint_colsr.{name}": f"joint_colsr.run.{name}" for name in (
        "config_checks", "resolvers", "hydra_callbacks", "callbacks", "checkpointing", "resume", "preemption",
        "slurm_requeue", "syncs", "averaging", "outputs")},
    **{f"joint_colsr.{name}": f"joint_colsr.ops.{name}" for name in ("slurm_local", "wheelhouse")},
}


def upgrade_class_path(path: str) -> str:
    """``path`` with a moved module prefix replaced (``joint_colsr.callbacks.EMA`` ->
    ``joint_colsr.run.callbacks.EMA``); any other string unchanged."""
    for old, new in MOVED.items():
        if path == old or path.startswith(old + "."):
            return new + path[len(old):]
    return path


def upgrade_class_paths(node: Any) -> Any:
    """``node`` (nested dicts and lists, changed in place) with every moved class path upgraded
    (see :func:`upgrade_class_path`); a lone string is returned upgraded."""
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = upgrade_class_paths(value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = upgrade_class_paths(value)
    elif isinstance(node, str) and node.startswith("joint_colsr."):
        return upgrade_class_path(node)
    return node


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: Any) -> Any:
        warnings.warn(f"{spec.name} moved to {self.new}; importing it from there", FutureWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: Any) -> None:  # the module was executed under its new name
        pass


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        new = MOVED.get(fullname)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new)) if new else None


def install_aliases() -> None:
    """Let the old module paths of :data:`MOVED` import (idempotent)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
