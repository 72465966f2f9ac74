"""Signals defined elsewhere, held here too, some under other names."""

from collections.abc import Callable

from django.dispatch import Signal

from tests.events import accounts
from tests.events.accounts import account_closed

opened = accounts.account_created

__all__ = ["account_closed", "opened"]


def connect_to_another(receiver: Callable[..., object]) -> None:
    # A function's own variable, not this module's account_closed.
    account_closed = Signal()
    account_closed.connect(receiver)
