"""The tasks Django Q2 workers run for queued signals.

Their dotted paths, ``django_q_signals.worker.run_call`` (one call) and
``django_q_signals.worker.run_batch`` (a batch), are stored in every queued
task; ``django_q_signals.worker.relay`` in the outbox's schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from asgiref.sync import async_to_sync
from django.core.exceptions import SynchronousOnlyOperation

from django_q_signals._outbox import Claim, Ref
from django_q_signals._payload import (
    Arguments,
    Rows,
    Task,
    describe_rows,
    open_call,
    read,
    rebuild,
)
from django_q_signals._registry import Receiver, get_receiver

logger = logging.getLogger("django_q_signals")


def run_call(payload: Any, outbox: Ref | None = None) -> Any:
    """Rebuild a queued signal's arguments and call its handler.

    ``outbox``: where the call's outbox row is. The row is claimed first, and
    nothing runs if another run has it or it is gone.
    """
    receiver, task = _find(payload)
    claim = Claim(receiver, [outbox]) if outbox else None
    if claim and not claim.holds(outbox):
        _log_not_claimed(receiver, [outbox])
        return None
    try:
        try:
            arguments = open_call(task.body, receiver, task.alias)
        except ValueError as exc:
            raise ValueError(f"A call to {receiver.key} failed: {exc}") from exc
        result = _call(receiver, arguments, Rows(receiver, [arguments]))
    except Exception as exc:
        if claim:
            claim.failed(outbox, exc)
        raise
    if claim:
        claim.succeeded([outbox])
    return result


def run_batch(payload: Any, outbox: Sequence[Ref | None] | None = None) -> int:
    """Run a batch of one receiver's calls, in order; fail if any call failed.

    Every call runs even when an earlier one raised, or could not be loaded;
    the task then fails with an error that lists the failed calls, so Django
    Q2 records a failure. ``outbox``: where each call's outbox row is; the
    rows are claimed with one query, and calls another run has, or that are
    gone, are left out.
    """
    receiver, task = _find(payload)
    calls = list(task.body)
    refs = list(outbox) if outbox else [None] * len(calls)
    claim = Claim(receiver, refs) if outbox else None
    if claim:
        _log_not_claimed(receiver, [ref for ref in refs if not claim.holds(ref)])
    failures: dict[int, str] = {}
    opened: list[tuple[int, Arguments, Ref | None]] = []
    for number, (data, ref) in enumerate(zip(calls, refs, strict=True), 1):
        if claim and not claim.holds(ref):
            continue
        try:
            opened.append((number, open_call(data, receiver, task.alias), ref))
        except ValueError as exc:
            logger.error("%s: call %d of %d: %s", receiver.key, number, len(calls), exc)
            failures[number] = f"call {number}: {exc}"
            if claim:
                claim.failed(ref, exc)
    rows = Rows(receiver, [arguments for _, arguments, _ in opened])
    done = []
    for number, arguments, ref in opened:
        try:
            _call(receiver, arguments, rows)
        except Exception as exc:
            logger.exception(
                "%s: call %d of %d failed", receiver.key, number, len(calls)
            )
            failures[number] = (
                f"call {number} ({describe_rows(arguments.kwargs)}): "
                f"{type(exc).__name__}: {exc}"
            )
            if claim:
                claim.failed(ref, exc)
        else:
            done.append(ref)
    if claim:
        claim.succeeded(done)
    if failures:
        raise BatchError(
            f"{len(failures)} of {len(calls)} calls to {receiver.key} failed: "
            + "; ".join(failures[number] for number in sorted(failures))
        )
    return len(calls)


def relay() -> int:
    """Send again the outbox calls that are due (Django Q2 runs it on a
    schedule); how many were sent."""
    from django_q_signals import _relay

    return _relay.run()


def _log_not_claimed(receiver: Receiver, refs: Sequence[Ref | None]) -> None:
    if refs:
        logger.info(
            "%s: %d call(s) not run: another run has them, or they already ran "
            "(outbox rows %s)",
            receiver.key,
            len(refs),
            ", ".join(f"{ref[0]}:{ref[1]}" for ref in refs if ref),
        )


class BatchError(Exception):
    """Some calls of a batch failed; the others ran."""


def _find(payload: Any) -> tuple[Receiver, Task]:
    """The receiver a task is for, and the task as read."""
    try:
        task = read(payload)
        receiver = get_receiver(task.key)
        if receiver is None:
            raise LookupError(
                f"No async receiver {task.key!r} in this worker. Is the module "
                "that defines it imported when Django starts (for example from "
                "an AppConfig.ready())?"
            )
    except (LookupError, ValueError):
        logger.exception("Refused a queued signal")
        raise
    return receiver, task


def _call(receiver: Receiver, arguments: Arguments, rows: Rows) -> Any:
    sender, kwargs = rebuild(receiver, arguments, rows)
    logger.debug("Running %s", receiver.key)
    signal = receiver.signals[arguments.signal_index]
    if not receiver.is_async:
        return receiver.func(signal=signal, sender=sender, **kwargs)
    try:
        return async_to_sync(receiver.func)(signal=signal, sender=sender, **kwargs)
    except SynchronousOnlyOperation as exc:
        raise SynchronousOnlyOperation(
            f"{receiver.key} is an async handler, so reading a relation that is "
            "not loaded yet cannot run its query. Load what it reads with "
            "select_related=[...] or prefetch_related=[...] on @async_receiver, "
            f"or query with the async methods (await ... .aget()). ({exc})"
        ) from exc
