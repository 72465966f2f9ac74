"""The listing ``manage.py qsignals`` writes: each connected async receiver,
its signals, sender and options, and with ``--stats`` how its tasks and its
outbox calls went."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from django.core.management.base import OutputWrapper
from django.core.management.color import Style
from django.db.models.base import ModelBase
from django.dispatch import Signal

from django_q_signals._cli import cluster, outbox_stats
from django_q_signals._cli.results import SavedTasks, require_django_q, save_limit_note
from django_q_signals._cli.signal_names import signal_names
from django_q_signals._registry import Receiver, all_receivers

if TYPE_CHECKING:
    from django.db.models import Model

_LABEL_WIDTH = len("last failure:") + 2


class Listing:
    """Writes the listing with a command's output and style."""

    def __init__(self, out: OutputWrapper, style: Style) -> None:
        self._out = out
        self._style = style

    def write(self, *, stats: bool) -> None:
        if stats:
            require_django_q()
        receivers = sorted(
            (receiver for receiver in all_receivers() if receiver.is_connected()),
            key=lambda receiver: receiver.name,
        )
        if not receivers:
            self._out.write(
                "No async receivers are connected. A receiver is connected when "
                "the module defining it is imported: import it in your "
                "AppConfig.ready(), e.g. `from . import signals`."
            )
            return
        numbers = _Stats(receivers) if stats else None
        names = signal_names(
            signal for receiver in receivers for signal in receiver.signals
        )
        for receiver in receivers:
            self._describe(receiver, names)
            if numbers:
                self._stats(receiver, numbers)
            self._out.write("")
        if stats:
            self._django_q2(receivers)
            self._out.write(save_limit_note())

    def _describe(self, receiver: Receiver, names: dict[Signal, str]) -> None:
        """The receiver's name, signals, sender and options."""
        self._out.write(receiver.name, self._style.MIGRATE_LABEL)
        signals = [names[signal] for signal in receiver.signals]
        label = "signals" if len(signals) > 1 else "signal"
        self._line(label, ", ".join(signals))
        self._line("sender", _sender(receiver.sender))
        self._line("options", ", ".join(receiver.describe_options()))
        q_options = ", ".join(
            f"{name}={value!r}" for name, value in receiver.task_options().items()
        )
        self._line("q_options", q_options)

    def _stats(self, receiver: Receiver, numbers: _Stats) -> None:
        """How its tasks went, and its calls in the outbox."""
        self._line("tasks", numbers.tasks.counted(receiver))
        for failure in numbers.tasks.last_failure(receiver):
            self._line("last failure", failure, self._style.ERROR)
        outbox = numbers.outbox.get(receiver.name)
        if outbox is not None:
            self._line("outbox", outbox.described())
            self._line("last hour", outbox.described_recent())
        if receiver.name in numbers.failed:
            self._line("failed calls", numbers.failed[receiver.name], self._style.ERROR)
        if receiver.name in numbers.held_back:
            self._line("waiting for", numbers.held_back[receiver.name])

    def _django_q2(self, receivers: list[Receiver]) -> None:
        """The queues the receivers send to, and the clusters running."""
        said, warning = cluster.lines(receivers)
        self._out.write("Django Q2", self._style.MIGRATE_LABEL)
        for label, value in said:
            self._line(label, value)
        if warning:
            self._out.write(f"WARNING: {warning}", self._style.WARNING)
        self._out.write("")

    def _line(
        self, label: str, value: str, style: Callable[[str], str] | None = None
    ) -> None:
        # Values line up; a label longer than the others still gets a space.
        head = f"{label}:".ljust(_LABEL_WIDTH - 1)
        self._out.write(f"    {head} {value}", style)


class _Stats:
    """What ``--stats`` reads, once for all the receivers listed."""

    def __init__(self, receivers: list[Receiver]) -> None:
        self.tasks = SavedTasks(receivers)
        with_outbox = [receiver.name for receiver in receivers if receiver.uses_outbox]
        self.outbox = outbox_stats.numbers(with_outbox) if with_outbox else {}
        self.failed = outbox_stats.failed_calls() if with_outbox else {}
        self.held_back = outbox_stats.holding_back() if with_outbox else {}


def _sender(sender: Any) -> str:
    if sender is None:
        return "any"
    if isinstance(sender, ModelBase):
        return cast("type[Model]", sender)._meta.label
    if isinstance(sender, str):
        return sender
    return repr(sender)
