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
"""

from __future__ import annotations

import logging
import warnings

_TIP_PREFIX = "💡 Tip:"
# lightning_utilities' rank_zero_info logs through whichever of these Lightning installed last.
_LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                           "lightning_utilities.core.rank_zero")


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


_FILTER = _DropLightningTips()


def quiet_third_party_noise() -> None:
    """Install the filters listed in this module's docstring (safe to call more than once)."""
    for name in _LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")
