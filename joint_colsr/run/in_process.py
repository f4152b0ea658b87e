"""Run one of the suite's console commands inside this process: what ``python -m MODULE ARGS``
does, without a new interpreter importing torch, Lightning and Hydra again (seconds per run).

:func:`run_command` is how ``compare`` and ``two_stage`` train and evaluate one run after
another. The command runs through its own Hydra entry point (``hydra_command``), so its run
directory, ``.hydra/``, log file, callbacks and one-line errors are exactly those of the
console command. A command changes process-wide state (Hydra's singletons, OmegaConf's
resolvers, the root logger's handlers, environment variables, the SIGCHLD handler); each is
set aside before the command and put back after it, so a command may itself be running
inside a Hydra job (``two_stage`` inside ``compare``'s process, or a multirun job).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable


#: How many commands are running in this process through :func:`run_command` right now.
_DEPTH = 0


def running_in_process() -> bool:
    """Whether a command is running inside another program's process (:func:`run_command`):
    it must then end with an exception, never by ending the process."""
    return _DEPTH > 0


class CommandFailed(RuntimeError):
    """A command ended with a non-zero exit status; its one-line error was already printed."""


def run_command(main: Callable[[], Any], args: list[str]) -> None:
    """``python -m MODULE *args`` in this process, ``main`` being MODULE's ``hydra_command``
    entry point (main thread only); raises :class:`CommandFailed` on a non-zero exit, and
    anything the command raised (a bug) as itself."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobRuntime
    from omegaconf.basecontainer import BaseContainer

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_command runs a Hydra command, which needs the main thread (signal handlers)")
    module = main.__module__
    saved_argv, saved_instances, saved_environ = sys.argv, Singleton._instances, dict(os.environ)
    saved_resolvers = dict(BaseContainer._resolvers)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_sigchld = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
    # Fresh run state for the command (which Hydra, which job, its config); the registries
    # (config store, plugins, sources, version base) are shared: they are filled once, at import.
    Singleton._instances = {cls: obj for cls, obj in saved_instances.items()
                            if cls not in (GlobalHydra, HydraConfig, JobRuntime)}
    sys.argv = [module, *args]
    global _DEPTH
    _DEPTH += 1
    try:
        main()
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise CommandFailed(f"python -m {module} {' '.join(args)} failed (exit {stop.code}); its error is above") from None
    finally:
        _DEPTH -= 1
        sys.argv, Singleton._instances = saved_argv, saved_instances
        if dict(os.environ) != saved_environ:  # HYDRA_FULL_ERROR, Lightning's PL_GLOBAL_SEED ...
            os.environ.clear()
            os.environ.update(saved_environ)
        BaseContainer._resolvers.clear()
        BaseContainer._resolvers.update(saved_resolvers)
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()  # the command's log file
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        if saved_sigchld is not None:  # an error path resets it (config_checks._stop_loader_worker_watch)
            signal.signal(signal.SIGCHLD, saved_sigchld)
        gc.collect()  # the run's model, loaders and trainer, before the next run allocates its own
