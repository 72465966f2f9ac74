"""What Django Q2 saved of the receivers' tasks, for ``--stats``: how many
succeeded and failed, the last failure, and how many Django Q2 keeps."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import CommandError
from django.db.models import Count
from django.utils import timezone

from django_q_signals._payload import read
from django_q_signals._registry import Receiver
from django_q_signals._send import BATCH_TASK, TASK

# Django Q2 saves a failure as "<error> : <traceback>"; on one line, the
# traceback's header would only push the error out of view.
_TRACEBACK_HEAD = " : Traceback (most recent call last):"
_MESSAGE_LENGTH = 200


def require_django_q() -> None:
    if not apps.is_installed("django_q"):
        raise CommandError(
            "--stats reads the task results Django Q2 saves, but 'django_q' "
            "is not in INSTALLED_APPS."
        )


class SavedTasks:
    """The tasks Django Q2 saved for the receivers, counted per task name."""

    def __init__(self, receivers: list[Receiver]) -> None:
        from django_q.models import Task

        self._saved = Task.objects.filter(func__in=(TASK, BATCH_TASK))
        self._counts: Counter[tuple[str, bool]] = Counter()
        # The task names counted under each receiver's task name.
        self._names = {
            _task_name(receiver): {_task_name(receiver)} for receiver in receivers
        }
        others = self._count_by_task_name()
        if others:
            self._count_resubmitted(receivers, others)

    def _count_by_task_name(self) -> set[str]:
        """Count the tasks saved under a receiver's task name; the other
        task names."""
        others = set()
        for row in self._saved.values("name", "success").annotate(count=Count("pk")):
            if row["name"] in self._names:
                self._counts[row["name"], row["success"]] += row["count"]
            else:
                others.add(row["name"])
        return others

    def _count_resubmitted(self, receivers: list[Receiver], names: set[str]) -> None:
        """Count the tasks resubmitted from Django Q2's admin: a new, random
        name, and the same payload, which names the receiver."""
        task_names: dict[str | None, str] = {
            receiver.name: _task_name(receiver) for receiver in receivers
        }
        tasks = self._saved.filter(name__in=names)
        for name, args, success in tasks.values_list("name", "args", "success"):
            owner = task_names.get(_receiver_name(args))
            if owner:
                self._counts[owner, success] += 1
                self._names[owner].add(name)

    def counted(self, receiver: Receiver) -> str:
        name = _task_name(receiver)
        failed = self._counts[name, False]
        counted = f"{self._counts[name, True]} succeeded, {failed} failed"
        if receiver.is_batched:
            counted += " (a batch task counts once, however many calls it held)"
        return counted

    def last_failure(self, receiver: Receiver) -> list[str]:
        """When the receiver's last failed task stopped, and its error: at
        most one line; none without failures, or if the failure was deleted
        since the count."""
        name = _task_name(receiver)
        if not self._counts[name, False]:
            return []
        failures = self._saved.filter(name__in=self._names[name], success=False)
        latest = failures.order_by("-stopped", "-started")
        return [
            f"{_local(stopped).isoformat(' ', 'seconds')}  {_summary(result)}"
            for stopped, result in latest.values_list("stopped", "result")[:1]
        ]


def _task_name(receiver: Receiver) -> str:
    return str(receiver.task_options()["task_name"])


def _receiver_name(args: Any) -> str | None:
    """The receiver a task's arguments are for, if they are a queued call."""
    try:
        return read(args[0]).receiver_name
    except (IndexError, TypeError, ValueError):
        return None


def _local(when: datetime) -> datetime:
    return timezone.localtime(when) if settings.USE_TZ else when


def _summary(result: Any) -> str:
    line = str(result).partition("\n")[0].removesuffix(_TRACEBACK_HEAD)
    if len(line) > _MESSAGE_LENGTH:
        line = line[: _MESSAGE_LENGTH - 3] + "..."
    return line


def save_limit_note() -> str:
    """How many tasks Django Q2 keeps, so how far the counts reach."""
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
