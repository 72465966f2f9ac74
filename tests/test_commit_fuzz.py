"""Random programs of atomic blocks, signals and other commit callbacks, run
against an async receiver and against the reference: a plain receiver that
registers one ``on_commit`` callback per signal. Both must send the same
calls, at the same moments among the other callbacks, in the same order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connections, transaction
from django.test import TestCase

from django_q_signals import _send, async_receiver
from tests.conftest import custom

ALIASES = ["default", "other"]
PROGRAMS = 1000  # per test

Program = list[tuple[Any, ...]]


class Refused(Exception):
    """A commit callback that raises."""


class Abandoned(Exception):
    """The program leaves an atomic block by raising; it catches it."""


class Generator:
    def __init__(self, seed: int, aliases: list[str], captures: bool) -> None:
        self.random = random.Random(seed)
        self.aliases = aliases
        self.captures = captures
        self.signals = self.callbacks = 0

    def program(self, depth: int = 0, size: int = 8, in_block: bool = False) -> Program:
        return [
            self.statement(depth, in_block) for _ in range(self.random.randint(0, size))
        ]

    def statement(self, depth: int, in_block: bool) -> tuple[Any, ...]:
        roll = self.random.random()
        alias = self.random.choice(self.aliases)
        if roll < 0.45 or depth > 4:
            self.signals += 1
            return ("signal", self.signals, alias)
        if roll < 0.75:
            savepoint = self.random.random() < 0.8
            end = self.random.choice(
                ["commit", "commit", "commit", "rollback", "raise"]
            )
            body = self.program(depth + 1, 5, in_block=True)
            return ("atomic", alias, savepoint, body, end)
        # A capture runs the callbacks registered in its block: in a test's
        # own transaction, those of the code under test, not inside an
        # atomic block of its own (where calls share one callback).
        if roll < 0.93 or not self.captures or in_block:
            self.callbacks += 1
            how = self.random.choice(["ok", "ok", "raise", "robust", "program"])
            body = self.program(depth + 1, 4, in_block) if how == "program" else []
            return ("callback", self.callbacks, alias, how, body)
        return ("capture", alias, self.program(depth + 1, 4, in_block))


def execute(program: Program, log: list[Any]) -> None:
    for statement in program:
        kind = statement[0]
        if kind == "signal":
            _, n, alias = statement
            custom.send(sender=None, n=n, using=alias)
        elif kind == "atomic":
            _, alias, savepoint, body, end = statement
            try:
                with transaction.atomic(using=alias, savepoint=savepoint):
                    execute(body, log)
                    if end == "rollback":
                        transaction.set_rollback(True, using=alias)
                    elif end == "raise":
                        raise Abandoned
            except Abandoned:
                log.append("abandoned")
        elif kind == "callback":
            _, n, alias, how, body = statement

            def callback(n: int = n, how: str = how, body: Program = body) -> None:
                log.append(("callback", n))
                if how in ("raise", "robust"):
                    raise Refused(n)
                execute(body, log)

            transaction.on_commit(callback, using=alias, robust=how == "robust")
        else:
            _, alias, body = statement
            with TestCase.captureOnCommitCallbacks(using=alias, execute=True):
                execute(body, log)
            log.append("capture ended")


def run(program: Program, log: list[Any]) -> list[Any]:
    # A TestCase's transaction never commits: no callback of one run may be
    # left for the next, nor a broken transaction (an exception out of an
    # atomic(savepoint=False) block marks the test's for rollback).
    for alias in ALIASES:
        connections[alias].run_on_commit = []
        connections[alias].needs_rollback = False
    for statement in program:
        try:
            execute([statement], log)
        except Refused as exc:
            log.append(("refused", exc.args[0]))
    return log


@contextmanager
def reference() -> Iterator[list[Any]]:
    """Django's own semantics: one on_commit callback per signal."""
    log: list[Any] = []

    def receiver(n: int, using: str, **kwargs: Any) -> None:
        sent: list[int] = []

        def send() -> None:
            # A captured callback may run again at a real commit: a call is
            # sent once.
            if not sent:
                sent.append(n)
                log.append(("sent", n))

        transaction.on_commit(send, using=using)

    custom.connect(receiver, weak=False, dispatch_uid="fuzz-reference")
    try:
        yield log
    finally:
        custom.disconnect(dispatch_uid="fuzz-reference")


@contextmanager
def library() -> Iterator[list[Any]]:
    """An async receiver, its calls logged where they would be queued."""
    log: list[Any] = []

    def handler(**kwargs: Any) -> None:
        pass

    async_receiver(custom, dispatch_uid="fuzz-library")(handler)

    def record(calls: list[Any]) -> None:
        log.extend(("sent", call.value("n")) for call in calls)

    _send.diversions.append(record)
    try:
        yield log
    finally:
        _send.diversions.remove(record)
        custom.disconnect(dispatch_uid="fuzz-library")


def compare(seeds: range, aliases: list[str], *, captures: bool) -> None:
    for seed in seeds:
        generator = Generator(seed, aliases, captures)
        program = generator.program()
        if not captures and generator.random.random() < 0.6:
            # The whole program in one transaction.
            program = [("atomic", aliases[0], True, program, "commit")]
        with reference() as log:
            expected = run(program, log)
        with library() as log:
            got = run(program, log)
        assert got == expected, f"seed {seed}: {program}"


@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_commits_on_one_database() -> None:
    compare(range(PROGRAMS), ["default"], captures=False)


@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_commits_on_two_databases() -> None:
    compare(range(10**6, 10**6 + PROGRAMS), ALIASES, captures=False)


@pytest.mark.django_db(databases=ALIASES)
def test_in_a_test_transaction_with_captures() -> None:
    compare(range(2 * 10**6, 2 * 10**6 + PROGRAMS), ["default"], captures=True)


@pytest.mark.django_db(databases=ALIASES)
def test_in_a_test_transaction_on_two_databases() -> None:
    compare(range(3 * 10**6, 3 * 10**6 + PROGRAMS), ALIASES, captures=False)
