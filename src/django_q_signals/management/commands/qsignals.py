"""``manage.py qsignals``: the async receivers, and how their tasks went.

The command parses its arguments and hands the run to one of the modules
of ``django_q_signals._cli``: the listing, or an outbox action.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_q_signals._cli import outbox_actions
from django_q_signals._cli.receivers import Listing


class Command(BaseCommand):
    help = (
        "List the connected async receivers: handler, signals, sender and "
        "options. With --stats, also count the tasks Django Q2 saved for each "
        "receiver, successful and failed, show the last failure, and count the "
        "calls in the outbox. A batch task counts once, however many calls it "
        "held, and Django Q2 keeps only the last Q_CLUSTER['save_limit'] "
        "successful tasks. 'relay', 'retry' and 'discard' act on the outbox."
    )
    # Where discard reads its confirmation: call_command(..., stdin=...).
    stealth_options = ("stdin",)

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
        _add_selection(retry)
        discard = actions.add_parser(
            "discard", help="Delete outbox calls: their handlers will not run."
        )
        _add_selection(discard)
        discard.add_argument(
            "--state",
            choices=[*outbox_actions.STATES, "any"],
            default="failed",
            help="only the calls in this state (default: failed)",
        )
        discard.add_argument(
            "--no-input",
            "--noinput",
            action="store_false",
            dest="interactive",
            help="Do not ask before discarding every call in the state, as "
            "discard does without ids or --handler.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options.get("action")
        if not action:
            Listing(self.stdout, self.style).write(stats=options["stats"])
            return
        if action == "relay":
            done = outbox_actions.relay(everything=options["all"])
        elif action == "retry":
            done = outbox_actions.retry(
                options["ids"], handler=options["handler"], database=options["database"]
            )
        else:
            done = outbox_actions.discard(
                options["ids"],
                state=options["state"],
                handler=options["handler"],
                database=options["database"],
                confirm=self._asker(options) if options["interactive"] else None,
            )
        self.stdout.write(done)

    def _asker(self, options: dict[str, Any]) -> Callable[[str], bool]:
        """Asks a question on the terminal: whether the answer is yes."""
        stdin: TextIO | None = options.get("stdin", sys.stdin)

        def ask(question: str) -> bool:
            if stdin is None or not stdin.isatty():
                raise CommandError(
                    f"{question} Nothing was done: there is no terminal to "
                    "answer on. Pass --no-input to discard them without asking."
                )
            self.stdout.write(f"{question} [y/N] ", ending="")
            self.stdout.flush()
            return stdin.readline().strip().lower() in ("y", "yes")

        return ask


def _add_selection(action: argparse.ArgumentParser) -> None:
    """The arguments that select the calls ``retry`` and ``discard`` act on."""
    action.add_argument(
        "ids",
        nargs="*",
        type=outbox_actions.call_id,
        metavar="ID",
        help="the calls, by id: ALIAS:ID, or ID on the one database "
        "with the outbox or the one --database names",
    )
    action.add_argument(
        "--handler",
        help="only the calls of this handler: its dotted path (all its "
        "receivers), or one receiver's name",
    )
    action.add_argument(
        "--database",
        metavar="ALIAS",
        help="only the calls on this database (needed with ids given "
        "as ID where several databases have the outbox)",
    )
