"""The one place where the suite silences third-party messages that are noise for its users.

Each entry says what is dropped and why; nothing else is filtered (a warning that could
matter to a run stays visible). Installed by every command at start-up
(:func:`quiet_third_party_noise`), and idempotent.

Dropped:

* Lightning's "💡 Tip" advertisements for ``litlogger`` / ``litmodels`` (logged at INFO at
  every fit): cloud services this offline suite does not use.
* Lightning 2.6's own ``_pytree`` use of ``LeafSpec``, deprecated by torch 2.13: a message
  about Lightning's internals, that the user can do nothing about (matched on Lightning's
  module only, so the same deprecation in user code still shows).
* torch's "DataLoader worker ... is killed by signal" raised again while a loader that is
  being thrown away shuts its workers down (``__del__``, printed as "Exception ignored
  in"): the worker's death has already ended the run with its one-line error, or it no
  longer matters because the loader is gone. Every other unraisable error still prints.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

_TIP_PREFIX = "💡 Tip:"
# lightning_utilities' rank_zero_info logs through whichever of these Lightning installed last.
_LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                           "lightning_utilities.core.rank_zero")


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


_FILTER = _DropLightningTips()


def _is_dead_worker_echo(unraisable: Any) -> bool:
    err = unraisable.exc_value  # torch's wording, raised by its SIGCHLD handler (torch.utils.data._utils.signal_handling)
    return isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker (pid") and "killed by signal" in str(err)


def _drop_dead_worker_echo(unraisable: Any) -> None:
    if not _is_dead_worker_echo(unraisable):
        _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


def quiet_third_party_noise() -> None:
    """Install the filters listed in this module's docstring (safe to call more than once)."""
    for name in _LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    if sys.unraisablehook is not _drop_dead_worker_echo:
        global _previous_unraisablehook
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _drop_dead_worker_echo
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")
