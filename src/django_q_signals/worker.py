"""The tasks Django Q2 workers run for queued signals.

Their dotted paths, ``django_q_signals.worker.run_call`` (one call) and
``django_q_signals.worker.run_batch`` (a batch), are stored in every queued
task; ``django_q_signals.worker.relay`` in the outbox's schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from asgiref.sync import async_to_sync
from django.core.exceptions import SynchronousOnlyOperation

from django_q_signals import _order, _progress, _send
from django_q_signals._claim import Claim
from django_q_signals._outbox import Ref
from django_q_signals._payload import (
    Arguments,
    Call,
    Payload,
    describe_rows,
    open_call,
    read,
)
from django_q_signals._registry import Receiver, get_receiver
from django_q_signals._rows import Rows, rebuild
from django_q_signals._time_limit import TimeLimit

logger = logging.getLogger("django_q_signals")


def run_call(payload: Any, outbox: Ref | None = None) -> Any:
    """Rebuild a queued signal's arguments and call its handler.

    ``outbox``: where the call's outbox row is. The row is claimed first, and
    nothing runs if another run has it or it is gone.
    """
    receiver, read_payload = _find(payload)
    with TimeLimit() as limit:
        claim = Claim(receiver, [outbox]) if outbox else None
        if claim and not claim.holds(outbox):
            _log_not_claimed(receiver, [outbox])
            return None
        try:
            return _run_claimed(receiver, read_payload, limit, claim, outbox)
        finally:
            if claim:
                _finish(receiver, claim)


def _run_claimed(
    receiver: Receiver,
    read_payload: Payload,
    limit: TimeLimit,
    claim: Claim | None,
    outbox: Ref | None,
) -> Any:
    """``run_call``'s call, once its row is claimed (if it has one): the
    handler's result, and what became of the call recorded on its row."""
    try:
        try:
            data = claim.call(outbox, read_payload.body) if claim else read_payload.body
            arguments = open_call(data, receiver, read_payload.alias)
        except ValueError as exc:
            raise ValueError(f"A call to {receiver.name} failed: {exc}") from exc
        with limit.handler(), _progress.reporting(claim, outbox):
            result = _run_handler(receiver, arguments, Rows(receiver, [arguments]))
    except BaseException as exc:
        if claim and _is_failure(exc):
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

    Django Q2's time limit fails the call it cuts short; the calls after it
    are sent again as a task of their own, and the calls that returned are
    never run again.
    """
    receiver, read_payload = _find(payload)
    calls = list(read_payload.body)
    with TimeLimit() as limit:
        batch = _Batch(receiver, read_payload.alias, calls, outbox)
        try:
            batch.run(limit)
        finally:
            batch.record_done()
    if batch.failures:
        raise BatchError(
            f"{len(batch.failures)} of {len(calls)} calls to {receiver.name} failed: "
            + "; ".join(batch.failures[number] for number in sorted(batch.failures))
        )
    return len(calls)


class _Opened(NamedTuple):
    """A call of a batch, its arguments read."""

    number: int
    data: Any
    arguments: Arguments
    ref: Ref | None

    def as_call(self, receiver: Receiver, alias: str) -> Call:
        """The call as it is queued, to send it again."""
        outbox_id = None if self.ref is None else self.ref[1]
        return Call(receiver, alias, self.data, outbox_id=outbox_id)


class _Batch:
    """One batch task's run: its calls claimed and opened, run in order,
    and what became of each."""

    def __init__(
        self,
        receiver: Receiver,
        alias: str,
        calls: list[Any],
        outbox: Sequence[Ref | None] | None,
    ) -> None:
        self.receiver = receiver
        self.alias = alias
        self.total = len(calls)
        refs = list(outbox) if outbox else [None] * len(calls)
        self.claim = Claim(receiver, refs) if outbox else None
        if self.claim:
            not_claimed = [ref for ref in refs if not self.claim.holds(ref)]
            _log_not_claimed(receiver, not_claimed)
        #: The failed calls' errors, by number.
        self.failures: dict[int, str] = {}
        #: The refs of the calls whose handler returned.
        self.done: list[Ref | None] = []
        self.opened: list[_Opened] = []
        for number, (data, ref) in enumerate(zip(calls, refs, strict=True), 1):
            if self.claim and not self.claim.holds(ref):
                continue
            try:
                if self.claim:
                    data = self.claim.call(ref, data)
                arguments = open_call(data, receiver, alias)
            except ValueError as exc:
                logger.error(
                    "%s: call %d of %d: %s", receiver.name, number, self.total, exc
                )
                self.failed(number, ref, f"call {number}: {exc}", exc)
            else:
                self.opened.append(_Opened(number, data, arguments, ref))

    def failed(
        self, number: int, ref: Ref | None, text: str, error: BaseException
    ) -> None:
        self.failures[number] = text
        if self.claim:
            self.claim.failed(ref, error)

    def run(self, limit: TimeLimit) -> None:
        """Call the handler for each call, in order. Stopped by the time
        limit, the run records the call it cut short and sends the rest again."""
        rows = Rows(self.receiver, [call.arguments for call in self.opened])
        position, running = 0, False
        try:
            for position, call in enumerate(self.opened):  # noqa: B007 (read on a cut)
                limit.check()
                running = True
                self._run_one(call, rows, limit)
                running = False
        except (SystemExit, KeyboardInterrupt) as cut:
            cut_call = self.opened[position] if running else None
            rest = self.opened[position + 1 :] if running else self.opened[position:]
            said = self._cut_short(cut, cut_call, rest)
            if said is cut:
                raise
            raise said from cut

    def _run_one(self, call: _Opened, rows: Rows, limit: TimeLimit) -> None:
        try:
            with limit.handler(), _progress.reporting(self.claim, call.ref):
                _run_handler(self.receiver, call.arguments, rows)
        except Exception as exc:
            logger.exception(
                "%s: call %d of %d failed", self.receiver.name, call.number, self.total
            )
            self.failed(call.number, call.ref, _failure(call, exc), exc)
        else:
            self.done.append(call.ref)

    def record_done(self) -> None:
        if self.claim:
            self.claim.succeeded(self.done)
            _finish(self.receiver, self.claim)

    def _cut_short(
        self, cut: BaseException, cut_call: _Opened | None, rest: list[_Opened]
    ) -> BaseException:
        """Record a run that the time limit (or a stop) cut short: the call
        it cut failed, the calls after it are sent again. What to raise."""
        said = []
        if cut_call is not None:
            rows = describe_rows(cut_call.arguments.kwargs)
            said.append(
                f"call {cut_call.number} of {self.total}"
                f"{f' ({rows})' if rows else ''} was cut short"
            )
            if self.claim and _is_failure(cut):
                self.claim.failed(cut_call.ref, cut)
        if rest:
            numbers = ", ".join(str(call.number) for call in rest)
            said.append(f"calls {numbers} did not run and were sent again")
            if self.claim:
                self.claim.release([call.ref for call in rest])
            _send.send([call.as_call(self.receiver, self.alias) for call in rest])
        logger.error("%s: %s: %s", self.receiver.name, cut, "; ".join(said))
        if not (isinstance(cut, SystemExit) and said):
            return cut
        try:
            return type(cut)(f"{cut}; {self.receiver.name}: {'; '.join(said)}")
        except TypeError:  # pragma: no cover (an exception class of its own)
            return cut


def _finish(receiver: Receiver, claim: Claim) -> None:
    """The run is over: the rows of the calls that ran go, the run is
    recorded, and, for an ordered receiver, the next waiting call of each of
    their rows is sent."""
    claim.finish()
    if claim.rows_done:
        _order.send_next(receiver.name, claim.rows_done)


def _failure(call: _Opened, error: BaseException) -> str:
    return (
        f"call {call.number} ({describe_rows(call.arguments.kwargs)}): "
        f"{type(error).__name__}: {error}"
    )


def _is_failure(error: BaseException) -> bool:
    """Whether ``error`` is the call's failure: an exception of the handler's,
    or Django Q2's time limit (a SystemExit). A worker being stopped
    (KeyboardInterrupt) leaves the call to run again once its claim expires."""
    return isinstance(error, (Exception, SystemExit))


def relay() -> int:
    """Send again the outbox calls that are due (Django Q2 runs it on a
    schedule); how many were sent."""
    from django_q_signals import _relay

    return _relay.run()


def _log_not_claimed(receiver: Receiver, refs: Sequence[Ref | None]) -> None:
    if refs:
        waiting = ", or they wait for an earlier call" if receiver.keeps_order else ""
        logger.info(
            "%s: %d call(s) not run: another run has them, or they already ran%s "
            "(outbox rows %s)",
            receiver.name,
            len(refs),
            waiting,
            ", ".join(f"{ref[0]}:{ref[1]}" for ref in refs if ref),
        )


class BatchError(Exception):
    """Some calls of a batch failed; the others ran.

    A batch task fails with it, its message listing the failed calls; the
    testing helpers raise it when a batched handler raised.
    """


def _find(payload: Any) -> tuple[Receiver, Payload]:
    """The receiver a task is for, and its payload as read."""
    try:
        read_payload = read(payload)
        name = read_payload.receiver_name
        receiver = get_receiver(name)
        if receiver is None:
            raise LookupError(
                f"No async receiver {name!r} in this worker. Is the module that "
                "defines it imported when Django starts (for example from an "
                "AppConfig.ready())?"
            )
    except (LookupError, ValueError):
        logger.exception("Refused a queued signal")
        raise
    return receiver, read_payload


def run_arguments(receiver: Receiver, arguments: Arguments) -> Any:
    """Call a receiver's handler with arguments read from elsewhere than a
    task of this version: 0.x's task functions (``_compat``)."""
    return _run_handler(receiver, arguments, Rows(receiver, [arguments]))


def _run_handler(receiver: Receiver, arguments: Arguments, rows: Rows) -> Any:
    sender, kwargs = rebuild(receiver, arguments, rows)
    logger.debug("Running %s", receiver.name)
    signal = receiver.signals[arguments.signal_index]
    if not receiver.is_async:
        return receiver.func(signal=signal, sender=sender, **kwargs)
    try:
        return async_to_sync(receiver.func)(signal=signal, sender=sender, **kwargs)
    except SynchronousOnlyOperation as exc:
        raise SynchronousOnlyOperation(
            f"{receiver.name} is an async handler, so reading a relation that is "
            "not loaded yet cannot run its query. Load what it reads with "
            "select_related=[...] or prefetch_related=[...] on @async_receiver, "
            f"or query with the async methods (await ... .aget()). ({exc})"
        ) from exc
