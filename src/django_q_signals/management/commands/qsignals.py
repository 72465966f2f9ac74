"""``manage.py qsignals``: the async receivers, and how their tasks went."""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count
from django.db.models.base import ModelBase
from django.dispatch import Signal
from django.utils import timezone

from django_q_signals._queue import BATCH_TASK, TASK
from django_q_signals._registry import Receiver, all_receivers

if TYPE_CHECKING:
    from django.db.models import Model

# Django Q2 saves a failure as "<error> : <traceback>"; on one line, the
# traceback's header would only push the error out of view.
_TRACEBACK_HEAD = " : Traceback (most recent call last):"
_MESSAGE_LENGTH = 200
_LABEL_WIDTH = len("last failure:") + 2


class Command(BaseCommand):
    help = (
        "List the connected async receivers: handler, signals, sender and "
        "options. With --stats, also count the tasks Django Q2 saved for each "
        "receiver, successful and failed, and show the last failure. A batch "
        "task counts once, however many calls it held, and Django Q2 keeps "
        "only the last Q_CLUSTER['save_limit'] successful tasks."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stats",
            action="store_true",
            help="Also show each receiver's successful and failed tasks, and its "
            "last failure, from the results Django Q2 saved.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stats: bool = options["stats"]
        if stats and not apps.is_installed("django_q"):
            raise CommandError(
                "--stats reads the task results Django Q2 saves, but 'django_q' "
                "is not in INSTALLED_APPS."
            )
        receivers = sorted(
            (receiver for receiver in all_receivers() if receiver.is_connected()),
            key=lambda receiver: receiver.key,
        )
        if not receivers:
            self.stdout.write("No async receivers are connected.")
            return
        names = _signal_names(s for receiver in receivers for s in receiver.signals)
        counts = _task_counts(receivers) if stats else {}
        for receiver in receivers:
            self.stdout.write(receiver.key, self.style.MIGRATE_LABEL)
            signals = [names.get(id(s), repr(s)) for s in receiver.signals]
            label = "signals" if len(signals) > 1 else "signal"
            self._line(label, ", ".join(signals))
            self._line("sender", _sender(receiver.sender))
            self._line("options", ", ".join(_options(receiver)))
            options_text = ", ".join(
                f"{name}={value!r}" for name, value in receiver.task_options().items()
            )
            self._line("q_options", options_text)
            if stats:
                self._stats(receiver, counts)
            self.stdout.write("")
        if stats:
            self.stdout.write(_save_limit_note())

    def _line(
        self, label: str, value: str, style: Callable[[str], Any] | None = None
    ) -> None:
        self.stdout.write(f"    {label + ':':<{_LABEL_WIDTH}}{value}", style)

    def _stats(self, receiver: Receiver, counts: dict[tuple[str, bool], int]) -> None:
        name = _task_name(receiver)
        failed = counts.get((name, False), 0)
        tasks = f"{counts.get((name, True), 0)} succeeded, {failed} failed"
        if receiver.is_batched:
            tasks += " (a batch task counts once, however many calls it held)"
        self._line("tasks", tasks)
        if failed:
            # At most one row; none if it was deleted since the count.
            for stopped, result in _last_failure(name):
                when = timezone.localtime(stopped) if settings.USE_TZ else stopped
                summary = f"{when.isoformat(' ', 'seconds')}  {_summary(result)}"
                self._line("last failure", summary, self.style.ERROR)


def _on_commit(receiver: Receiver) -> str:
    if receiver.on_commit is None:
        return f"on_commit={receiver.waits_for_commit} (from Q_SIGNALS['ON_COMMIT'])"
    return f"on_commit={receiver.on_commit}"


def _task_name(receiver: Receiver) -> str:
    return str(receiver.task_options()["task_name"])


def _options(receiver: Receiver) -> list[str]:
    options = [_on_commit(receiver)]
    if receiver.is_batched:
        options.append(_batch(receiver))
    if receiver.snapshot:
        options.append("snapshot=True")
    for name, lookups in (
        ("select_related", receiver.select_related),
        ("prefetch_related", receiver.prefetch_related),
    ):
        if lookups:
            options.append(f"{name}={','.join(lookups)}")
    return options


def _batch(receiver: Receiver) -> str:
    if receiver.batch is True:
        return (
            f"batch=True ({receiver.batch_size} calls per task, "
            "from Q_SIGNALS['BATCH_SIZE'])"
        )
    return f"batch={receiver.batch}"


def _sender(sender: Any) -> str:
    if sender is None:
        return "any"
    if isinstance(sender, ModelBase):
        return cast("type[Model]", sender)._meta.label
    if isinstance(sender, str):
        return sender
    return repr(sender)


def _signal_names(signals: Iterable[Signal]) -> dict[int, str]:
    """A dotted name for each signal that a module holds, by the signal's id().

    A signal does not know its name, so look for it among the attributes of
    every imported module.
    """
    wanted = {id(signal) for signal in signals}
    found: dict[int, list[str]] = {}
    # Copies, since an import in another thread may change either meanwhile.
    for module_name, module in list(sys.modules.items()):
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if id(value) in wanted:
                found.setdefault(id(value), []).append(f"{module_name}.{attribute}")
    return {key: min(names, key=_preference) for key, names in found.items()}


def _preference(name: str) -> tuple[bool, bool, int, str]:
    # Other modules import a signal from the one that defines it, often one
    # called signals (and so may other signals modules: django_q.signals
    # holds post_save); failing those, the shortest name is likeliest.
    module, _, attribute = name.rpartition(".")
    return (
        not _assigns(module, attribute),
        not module.endswith("signals"),
        len(name),
        name,
    )


def _assigns(module: str, attribute: str) -> bool:
    """Whether the source of ``module`` assigns ``attribute`` at top level."""
    try:
        source = inspect.getsource(sys.modules[module])
    except (KeyError, OSError, TypeError):
        return False
    pattern = rf"^{re.escape(attribute)}\s*(?::[^=\n]*)?=(?!=)"
    return re.search(pattern, source, re.MULTILINE) is not None


def _task_counts(receivers: list[Receiver]) -> dict[tuple[str, bool], int]:
    """Tasks saved per (task name, success), for all receivers in one query."""
    from django_q.models import Task

    rows = (
        Task.objects.filter(
            func__in=(TASK, BATCH_TASK),
            name__in={_task_name(receiver) for receiver in receivers},
        )
        .values("name", "success")
        .annotate(count=Count("pk"))
    )
    return {(row["name"], row["success"]): row["count"] for row in rows}


def _last_failure(name: str) -> list[tuple[Any, Any]]:
    from django_q.models import Task

    failures = Task.objects.filter(
        func__in=(TASK, BATCH_TASK), name=name, success=False
    )
    latest = failures.order_by("-stopped", "-started")
    return list(latest.values_list("stopped", "result")[:1])


def _summary(result: Any) -> str:
    line = str(result).partition("\n")[0].removesuffix(_TRACEBACK_HEAD)
    if len(line) > _MESSAGE_LENGTH:
        line = line[: _MESSAGE_LENGTH - 3] + "..."
    return line


def _save_limit_note() -> str:
    from django_q.conf import Conf

    limit = Conf.SAVE_LIMIT
    if limit > 0:
        per = f" per {Conf.SAVE_LIMIT_PER}" if Conf.SAVE_LIMIT_PER else ""
        return (
            f"Django Q2 keeps only the last {limit} successful tasks{per} "
            "(Q_CLUSTER['save_limit']): older successes are not counted."
        )
    if limit == 0:
        return "Django Q2 keeps every task (Q_CLUSTER['save_limit'] is 0)."
    return (
        "Django Q2 saves no successful tasks (Q_CLUSTER['save_limit'] is below "
        "0): only failures are counted."
    )
