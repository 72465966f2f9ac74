"""Run Django signal handlers on the Django Q2 task queue."""

from django_q_signals._decorator import async_receiver
from django_q_signals._outbox import pending

__all__ = ["async_receiver", "pending"]
