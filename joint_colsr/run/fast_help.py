"""``--help`` for the Hydra commands without importing torch and Lightning.

A command module calls :func:`answer_help_early` before its heavy imports. When this
process *is* that command (``python -m joint_colsr.X`` or the ``joint-colsr-X`` console
script) and was asked for ``--help``, ``-h`` or ``--hydra-help``, Hydra prints the same help
from the same config (its text lives in ``conf/hydra/help``) and the process exits; otherwise
nothing happens. The import of torch + Lightning this skips takes 5 to 70 s depending on the
machine's load. ``compare`` and ``model_table`` use argparse and import torch only inside
the functions that need it, so their ``--help`` is as quick without this module.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

HELP_FLAGS = frozenset({"--help", "-h", "--hydra-help"})


def _no_task(cfg: Any) -> None:  # Hydra answers --help before it would call this
    raise RuntimeError("fast_help: Hydra ran a task instead of printing help")


def answer_help_early(module_name: str, config_name: str) -> None:
    """Print Hydra's help for ``config_name`` and exit, if this process is the command
    ``joint_colsr.<config_name>`` asked for help (see the module docstring). A command line
    with a bare positional argument (``report DIR --help``) is left to the command itself.

    Args:
        module_name: the calling module's ``__name__`` (``"__main__"`` under ``python -m``).
        config_name: the command's config (``train``, ``eval``, ...), also its module's name.
    """
    argv = sys.argv
    is_command = module_name == "__main__" or Path(argv[0]).name == f"joint-colsr-{config_name.replace('_', '-')}"
    args = argv[1:]
    if not is_command or not HELP_FLAGS & set(args) or any(not a.startswith("-") and "=" not in a for a in args):
        return
    import hydra

    from joint_colsr import CONFIG_DIR

    task = types.FunctionType(_no_task.__code__, _no_task.__globals__, config_name)
    task.__module__ = f"joint_colsr.{config_name}"  # Hydra names the job (and its default help) after this
    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(task)()
