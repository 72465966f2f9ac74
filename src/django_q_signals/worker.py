"""The task Django Q2 workers run for every queued signal.

Its dotted path, ``django_q_signals.worker.run_receiver``, is stored in every
queued task: it stays stable across releases.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync

from django_q_signals._payload import decode_call

logger = logging.getLogger("django_q_signals")


def run_receiver(payload: bytes) -> Any:
    """Rebuild a queued signal's arguments and call its handler."""
    try:
        receiver, signal, sender, kwargs = decode_call(payload)
    except (LookupError, ValueError):
        logger.exception("Refused a queued signal")
        raise
    logger.debug("Running %s", receiver.key)
    handler = async_to_sync(receiver.func) if receiver.is_async else receiver.func
    return handler(signal=signal, sender=sender, **kwargs)
