"""Whether a row's outbox calls are done: ``ensure_idle()`` refuses to go on
while they are not, ``wait()`` and ``await_idle()`` wait for them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from django_q_signals._outbox import pending

if TYPE_CHECKING:
    from django.db.models import Model

    from django_q_signals.models import OutboxCall

#: Seconds between two looks at the outbox while waiting.
POLL = 0.2


class RowBusy(Exception):
    """Raised by ``ensure_idle()``: outbox calls for the row are still to run.

    ``calls`` holds them (``OutboxCall`` rows); the message names their
    handlers, with their progress where they said it.
    """

    def __init__(self, instance: Model, calls: list[OutboxCall]) -> None:
        self.instance = instance
        self.calls = calls
        super().__init__(
            f"{instance._meta.verbose_name} {instance.pk} is being processed: "
            + ", ".join(map(_described, calls))
        )


def _described(call: OutboxCall) -> str:
    handler = call.receiver.partition("#")[0].rpartition(".")[2]
    shown = call.progress or call.get_state_display().lower()
    return f"{handler} ({shown})"


def ensure_idle(
    instance: Model, handler: Callable[..., Any] | str | None = None
) -> None:
    """Raise ``RowBusy`` if outbox calls for ``instance``'s row (of
    ``handler``, if given) are still to run."""
    calls = list(pending(instance, handler).order_by("pk"))
    if calls:
        raise RowBusy(instance, calls)


def wait(
    instance: Model,
    handler: Callable[..., Any] | str | None = None,
    timeout: float = 10,
) -> bool:
    """Wait until no outbox call for ``instance``'s row (of ``handler``, if
    given) is still to run: True, or False once ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while pending(instance, handler).exists():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(POLL, left))
    return True


async def await_idle(
    instance: Model,
    handler: Callable[..., Any] | str | None = None,
    timeout: float = 10,
) -> bool:
    """``wait()`` for async code: ``await await_idle(instance)``."""
    deadline = time.monotonic() + timeout
    while await sync_to_async(_is_busy)(instance, handler):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(POLL, left))
    return True


def _is_busy(instance: Model, handler: Callable[..., Any] | str | None) -> bool:
    return pending(instance, handler).exists()
