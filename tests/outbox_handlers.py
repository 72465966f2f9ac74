"""Outbox handlers a real worker process runs: their own module, which the
suite's pass without the app never imports."""

from typing import Any

from django.dispatch import Signal

from django_q_signals import async_receiver
from tests.models import Seen

#: The relay run by the cluster itself: an outbox receiver of its own signal.
relay_probe = Signal()


@async_receiver(relay_probe, outbox=True)
def probe_relayed(word: str, **kwargs: Any) -> None:
    Seen.objects.create(handler="probe_relayed", title=word)
