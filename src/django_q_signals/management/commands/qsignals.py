"""``manage.py qsignals``: the async receivers, and how their tasks went."""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import sys
import tokenize
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Min
from django.db.models.base import ModelBase
from django.dispatch import Signal
from django.utils import timezone
from django.utils.timesince import timesince

from django_q_signals import _relay
from django_q_signals._payload import read
from django_q_signals._registry import Receiver, all_receivers
from django_q_signals._send import BATCH_TASK, TASK
from django_q_signals.models import OutboxCall, OutboxCallQuerySet

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
        "receiver, successful and failed, show the last failure, and count the "
        "calls in the outbox. A batch task counts once, however many calls it "
        "held, and Django Q2 keeps only the last Q_CLUSTER['save_limit'] "
        "successful tasks. 'relay', 'retry' and 'discard' act on the outbox."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stats",
            action="store_true",
            help="Also show each receiver's successful and failed tasks, its "
            "last failure, and its calls in the outbox.",
        )
        actions = parser.add_subparsers(dest="action", title="outbox actions")
        relay = actions.add_parser(
            "relay",
            help="Send the outbox calls that are due, as the scheduled relay does.",
        )
        relay.add_argument(
            "--all",
            action="store_true",
            help="Send every outbox call that is not running, due or not.",
        )
        retry = actions.add_parser("retry", help="Send failed outbox calls again now.")
        discard = actions.add_parser(
            "discard", help="Delete outbox calls: their handlers will not run."
        )
        for action in (retry, discard):
            action.add_argument(
                "ids",
                nargs="*",
                type=_call_id,
                metavar="ID",
                help="the calls, by id: ALIAS:ID, or ID on the one database "
                "with the outbox or the one --database names",
            )
            action.add_argument(
                "--handler",
                help="only the calls of this handler: its dotted path (all its "
                "receivers), or one receiver's key",
            )
            action.add_argument(
                "--database",
                metavar="ALIAS",
                help="only the calls on this database (needed with ids given "
                "as ID where several databases have the outbox)",
            )
        discard.add_argument(
            "--state",
            choices=[*OUTBOX_STATES, "any"],
            default="failed",
            help="only the calls in this state (default: failed)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options.get("action")
        if action:
            self.stdout.write(_outbox_action(action, options))
            return
        stats: bool = options["stats"]
        if stats and not apps.is_installed("django_q"):
            raise CommandError(
                "--stats reads the task results Django Q2 saves, but 'django_q' "
                "is not in INSTALLED_APPS."
            )
        receivers = sorted(
            (receiver for receiver in all_receivers() if receiver.is_connected()),
            key=lambda receiver: receiver.name,
        )
        if not receivers:
            self.stdout.write("No async receivers are connected.")
            return
        tasks = _SavedTasks(receivers) if stats else None
        with_outbox = stats and any(receiver.uses_outbox for receiver in receivers)
        outbox = _outbox_counts() if with_outbox else {}
        failed = _failed_calls() if with_outbox else {}
        signal_names = _signal_names(
            signal for receiver in receivers for signal in receiver.signals
        )
        for receiver in receivers:
            self.stdout.write(receiver.name, self.style.MIGRATE_LABEL)
            signals = [signal_names[signal] for signal in receiver.signals]
            label = "signals" if len(signals) > 1 else "signal"
            self._line(label, ", ".join(signals))
            self._line("sender", _sender(receiver.sender))
            self._line("options", ", ".join(receiver.describe_options()))
            options_text = ", ".join(
                f"{name}={value!r}" for name, value in receiver.task_options().items()
            )
            self._line("q_options", options_text)
            if tasks:
                self._stats(receiver, tasks)
            if with_outbox and (receiver.name in outbox or receiver.uses_outbox):
                self._line("outbox", outbox.get(receiver.name, "empty"))
            if receiver.name in failed:
                self._line("failed calls", failed[receiver.name], self.style.ERROR)
            self.stdout.write("")
        if stats:
            self.stdout.write(_save_limit_note())

    def _line(
        self, label: str, value: str, style: Callable[[str], Any] | None = None
    ) -> None:
        self.stdout.write(f"    {label + ':':<{_LABEL_WIDTH}}{value}", style)

    def _stats(self, receiver: Receiver, tasks: _SavedTasks) -> None:
        name = _task_name(receiver)
        failed = tasks.counts[name, False]
        counted = f"{tasks.counts[name, True]} succeeded, {failed} failed"
        if receiver.is_batched:
            counted += " (a batch task counts once, however many calls it held)"
        self._line("tasks", counted)
        if failed:
            # At most one row; none if it was deleted since the count.
            for stopped, result in tasks.last_failure(name):
                when = timezone.localtime(stopped) if settings.USE_TZ else stopped
                summary = f"{when.isoformat(' ', 'seconds')}  {_summary(result)}"
                self._line("last failure", summary, self.style.ERROR)


OUTBOX_STATES = tuple(OutboxCall.State.values)


def _outbox_action(action: str, options: dict[str, Any]) -> str:
    if action == "relay":
        sent = _relay.run(everything=options["all"])
        return f"Sent {sent} outbox call(s) to the broker."
    states = ["failed"] if action == "retry" else [options["state"]]
    if states == ["any"]:
        states = list(OUTBOX_STATES)
    selected = _selected(
        states, options["ids"], options["handler"], options["database"]
    )
    if action == "retry":
        sent = sum(_relay.send_again(rows) for rows in selected)
        return f"Sent {sent} failed outbox call(s) again."
    discarded = sum(rows.delete()[0] for rows in selected)
    return f"Discarded {discarded} outbox call(s)."


def _call_id(text: str) -> tuple[str | None, int]:
    """A call's id as given: ``ALIAS:ID``, or ``ID`` alone."""
    alias, _, number = text.rpartition(":")
    try:
        return alias or None, int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an outbox call's id: give ID or ALIAS:ID, for "
            "example 41 or default:41."
        ) from None


def _selected(
    states: list[str],
    ids: list[tuple[str | None, int]],
    handler: str | None,
    database: str | None,
) -> list[OutboxCallQuerySet]:
    """The calls an action acts on, per database. Each database numbers its
    calls from 1, so an id names a call on one database only; an id or a
    handler that names no call is a CommandError, and nothing is done."""
    aliases = _relay.aliases()
    if database is not None:
        if database not in aliases:
            raise CommandError(
                f"The database {database!r} has no outbox table "
                f"({_having_the_table(aliases)})."
            )
        aliases = [database]
    wanted: dict[str, set[int]] = defaultdict(set)
    for alias, pk in ids:
        if alias is None:
            if len(aliases) != 1:
                raise CommandError(
                    f"Which database's call {pk}? Each database numbers its "
                    f"calls from 1 ({_having_the_table(aliases)}): give "
                    f"--database ALIAS, or write the id as ALIAS:{pk}."
                )
            alias = aliases[0]
        elif database is not None and alias != database:
            raise CommandError(f"{alias}:{pk} is on {alias!r}, not {database!r}.")
        elif alias not in aliases:
            raise CommandError(
                f"{alias}:{pk}: the database {alias!r} has no outbox table "
                f"({_having_the_table(aliases)})."
            )
        wanted[alias].add(pk)
    noun = "outbox call" if len(states) > 1 else f"{states[0]} outbox call"
    of = f" of the handler {handler!r}" if handler else ""
    selected: list[OutboxCallQuerySet] = []
    missing = []
    for alias in wanted if ids else aliases:
        rows = OutboxCall.objects.using(alias).filter(state__in=states)
        if handler:
            rows = rows.of_handler(handler)
        if ids:
            rows = rows.filter(pk__in=wanted[alias])
            found = set(rows.values_list("pk", flat=True))
            missing += [f"{alias}:{pk}" for pk in sorted(wanted[alias] - found)]
        selected.append(rows)
    if missing:
        raise CommandError(
            f"No {noun}{of} has the {'id' if len(missing) == 1 else 'ids'} "
            f"{', '.join(missing)}: nothing was done."
        )
    if handler and not ids and not any(rows.exists() for rows in selected):
        raise CommandError(f"No {noun}{of}, on any database: nothing was done.")
    return selected


def _having_the_table(aliases: list[str]) -> str:
    listed = ", ".join(map(repr, aliases)) or "none"
    return f"databases with the outbox table: {listed}"


def _outbox_counts() -> dict[str, str]:
    """Per receiver: its calls in the outbox by state, and the oldest's age."""
    counts: dict[str, Counter[str]] = {}
    oldest: dict[str, Any] = {}
    for alias in _relay.aliases():
        rows = OutboxCall.objects.using(alias).values("receiver", "state")
        for row in rows.annotate(count=Count("pk"), oldest=Min("created")):
            name = row["receiver"]
            counts.setdefault(name, Counter())[row["state"]] += row["count"]
            oldest[name] = min(oldest.get(name, row["oldest"]), row["oldest"])
    return {
        name: ", ".join(
            f"{by_state[state]} {state}" for state in OUTBOX_STATES if by_state[state]
        )
        # timesince() joins its numbers and units with no-break spaces.
        + f"; the oldest written {timesince(oldest[name]).replace(chr(160), ' ')} ago"
        for name, by_state in counts.items()
    }


#: The most failed calls ``--stats`` names per receiver.
_FAILED_NAMED = 10


def _failed_calls() -> dict[str, str]:
    """Per receiver: the ids of its failed outbox calls, as ``retry`` and
    ``discard`` take them (``ALIAS:ID``), the first few by id."""
    named: dict[str, list[str]] = defaultdict(list)
    more: Counter[str] = Counter()
    for alias in _relay.aliases():
        rows = OutboxCall.objects.using(alias).failed()
        for name, pk in rows.order_by("pk").values_list("receiver", "pk").iterator():
            if len(named[name]) < _FAILED_NAMED:
                named[name].append(f"{alias}:{pk}")
            else:
                more[name] += 1
    return {
        name: ", ".join(ids) + (f" and {more[name]} more" if more[name] else "")
        for name, ids in named.items()
    }


def _task_name(receiver: Receiver) -> str:
    return str(receiver.task_options()["task_name"])


def _sender(sender: Any) -> str:
    if sender is None:
        return "any"
    if isinstance(sender, ModelBase):
        return cast("type[Model]", sender)._meta.label
    if isinstance(sender, str):
        return sender
    return repr(sender)


def _signal_names(signals: Iterable[Signal]) -> dict[Signal, str]:
    """A dotted name for each signal: the module that defines it, and the
    name it has there.

    A Signal does not know where it was created, so the command looks for it,
    once per run, among the module-level attributes of the modules already
    imported. Several modules may hold the same signal (a package's
    ``__init__`` re-exporting it, every module that imported it). The module
    whose own source assigns it the result of a call (``name = Signal()``,
    ``name: Signal = ModelSignal(...)``, a factory) defines it; importing it
    (``from x import name``) or aliasing it (``alias = x.name``) does not. A
    module whose source cannot be read (compiled only, built at run time) may
    be the one, so it comes next; last, any module holding it. Among equals,
    the deepest module wins (a package usually re-exports from its
    submodules), then the names in alphabetical order.
    """
    wanted = {id(signal): signal for signal in signals}
    holders: dict[Signal, list[tuple[str, str]]] = defaultdict(list)
    modules = {
        name: module
        for name, module in list(sys.modules.items())
        if isinstance(module, ModuleType)
    }
    for module_name, module in modules.items():
        # Not vars(module): reading __dict__ through the module would load a
        # module that importlib.util.LazyLoader has not loaded yet.
        namespace: dict[str, Any] = object.__getattribute__(module, "__dict__")
        for attribute, value in list(namespace.items()):
            if id(value) in wanted:
                holders[wanted[id(value)]].append((module_name, attribute))
    assigned = {
        module_name: _assigned_from_a_call(modules[module_name])
        for module_name, _ in itertools.chain.from_iterable(holders.values())
    }
    names = {}
    for signal in wanted.values():
        held = holders[signal]
        created = [
            (module_name, attribute)
            for module_name, attribute in held
            if attribute in (assigned[module_name] or ())
        ]
        unread = [pair for pair in held if assigned[pair[0]] is None]
        candidates = created or unread or held
        if candidates:
            module_name, attribute = min(
                candidates, key=lambda pair: (-pair[0].count("."), pair)
            )
            names[signal] = f"{module_name}.{attribute}"
        else:
            names[signal] = f"an unnamed signal ({signal!r})"
    return names


def _assigned_from_a_call(module: ModuleType) -> set[str] | None:
    """The names the module's own top-level code assigns a call's result;
    None if its source cannot be read."""
    try:
        # TypeError: no file (built in, or built at run time).
        file = inspect.getsourcefile(module)
        if file is None:  # Compiled only: bytecode, an extension module.
            return None
        with tokenize.open(file) as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, TypeError, ValueError):
        # Or a file removed or changed since the module was imported.
        return None
    names: set[str] = set()
    for node in _module_level(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(
            node.value, ast.Call
        ):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(
                target.id for target in targets if isinstance(target, ast.Name)
            )
    return names


def _module_level(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of module-level code, ``if`` and ``try`` blocks included,
    function and class bodies left out."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield child
            yield from _module_level(child)


class _SavedTasks:
    """The tasks Django Q2 saved for the receivers, counted per task name."""

    def __init__(self, receivers: list[Receiver]) -> None:
        from django_q.models import Task

        self._saved = Task.objects.filter(func__in=(TASK, BATCH_TASK))
        self.counts: Counter[tuple[str, bool]] = Counter()
        # The task names counted under each receiver's name.
        self._names = {
            _task_name(receiver): {_task_name(receiver)} for receiver in receivers
        }
        others = set()
        for row in self._saved.values("name", "success").annotate(count=Count("pk")):
            if row["name"] in self._names:
                self.counts[row["name"], row["success"]] += row["count"]
            else:
                others.add(row["name"])
        if others:
            # Resubmitted from Django Q2's admin: a new, random name, and the
            # same payload, which names the receiver.
            by_receiver_name: dict[str | None, str] = {
                receiver.name: _task_name(receiver) for receiver in receivers
            }
            tasks = self._saved.filter(name__in=others)
            for name, args, success in tasks.values_list("name", "args", "success"):
                owner = by_receiver_name.get(_receiver_name(args))
                if owner:
                    self.counts[owner, success] += 1
                    self._names[owner].add(name)

    def last_failure(self, name: str) -> list[tuple[Any, Any]]:
        failures = self._saved.filter(name__in=self._names[name], success=False)
        latest = failures.order_by("-stopped", "-started")
        return list(latest.values_list("stopped", "result")[:1])


def _receiver_name(args: Any) -> str | None:
    """The receiver a task's arguments are for, if they are a queued call."""
    try:
        return read(args[0]).receiver_name
    except (IndexError, TypeError, ValueError):
        return None


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
