"""Signals of the tests' own, defined in submodules and re-exported here, as
a package often does."""

from tests.events.accounts import account_closed, account_created

__all__ = ["account_closed", "account_created"]
