"""The task Django Q2 workers run for every queued signal.

Its dotted path, ``django_q_signals.worker.run_receiver``, is stored in every
queued task: it stays stable across releases.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync

from django_q_signals._payload import load, rebuild
from django_q_signals._receivers import get_receiver

logger = logging.getLogger("django_q_signals")


def run_receiver(payload: bytes) -> Any:
    """Rebuild a queued signal's arguments and call its handler."""
    try:
        queued = load(payload)
        receiver = get_receiver(queued.key, queued.module)
        if receiver is None:
            raise LookupError(
                f"No async receiver {queued.key!r} in this worker. Is the module "
                "that defines it imported when Django starts (for example from "
                "an AppConfig.ready())?"
            )
    except (LookupError, ValueError):
        logger.exception("Refused a queued signal")
        raise
    signal, sender, kwargs = rebuild(receiver, queued)
    logger.debug("Running %s", receiver.key)
    handler = async_to_sync(receiver.func) if receiver.is_async else receiver.func
    return handler(signal=signal, sender=sender, **kwargs)
