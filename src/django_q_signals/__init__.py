"""Run Django signal handlers on the Django Q2 task queue."""

from django_q_signals._decorator import async_receiver
from django_q_signals._outbox import pending
from django_q_signals._progress import progress
from django_q_signals._status import RowBusy, await_idle, ensure_idle, wait

__all__ = [
    "RowBusy",
    "async_receiver",
    "await_idle",
    "ensure_idle",
    "pending",
    "progress",
    "wait",
]
