"""Where the ``account_*`` signals are defined."""

from django.dispatch import Signal

account_created = Signal()
account_closed: Signal = Signal()

#: Another name for one of them, in the module that defines it.
created = account_created
