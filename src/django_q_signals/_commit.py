"""Waiting for the commit: calls are sent at once, or when the transaction on
their database commits.

Deferred calls are kept in groups, each group one ``on_commit`` callback, so
that Django itself decides when each call is sent: it drops a group with the
savepoint it was registered in, runs groups in registration order with the
other callbacks, and stops at a callback that raises. A call joins the last
group only where that changes none of this: the group is still the last
callback on the connection, and would be dropped by exactly the savepoint
rollbacks that would drop the call's own callback. Each group sends its calls
in one write per broker (``_send``).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.transaction import TransactionManagementError

from django_q_signals import _outbox, _supersede
from django_q_signals._payload import concrete_label
from django_q_signals._send import send

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.transaction import Atomic

    from django_q_signals._payload import Call


def queue_call(call: Call) -> None:
    receiver = call.receiver
    outbox = receiver.uses_outbox
    if outbox:
        _outbox.require_app(receiver)
    elif not receiver.waits_for_commit:
        send([call], raise_errors=True)
        return
    connection = transaction.get_connection(call.alias)
    if connection.in_atomic_block:
        replaced = _defer(connection, call)
        if outbox:
            # Kept with the data; sent at the commit like any call.
            _outbox.write(call, replacing=replaced)
    elif connection.get_autocommit():
        if outbox:
            _outbox.write(call)
            send(_supersede.settle([call]))
        else:
            send([call])
    elif outbox:
        # Its row commits or rolls back with the data; the relay sends it.
        _outbox.write(call)
        _supersede.delete_superseded(call.alias, [call])
    else:
        # Manual transaction management has no commit callbacks: Django's
        # on_commit refuses it too.
        raise TransactionManagementError(
            f"{receiver.name} queues its calls when the transaction commits, "
            f"but the database {call.alias!r} is in manual transaction management "
            "(set_autocommit(False)), which has no commit callbacks. Give the "
            "receiver on_commit=False to queue at once, or outbox=True to keep "
            "the call in the outbox until the relay sends it."
        )


class _Group:
    """One ``on_commit`` callback: calls deferred one after the other."""

    __slots__ = ("calls", "index", "open", "previous", "savepoints", "scope")

    def __init__(
        self,
        savepoints: frozenset[str],
        previous: _Group | None,
        scope: object = None,
    ) -> None:
        # None where a later call of a coalescing receiver took one's place.
        self.calls: list[Call | None] = []
        # Where each coalescing receiver's call for a row is, by (receiver, row).
        self.index: dict[tuple[Any, ...], int] | None = None
        #: Whether calls may still join it: not once it ran.
        self.open = True
        # The savepoints open when it was registered: Django drops it when
        # one of them rolls back.
        self.savepoints = savepoints
        # The group registered just before it, with no callback in between.
        self.previous = previous
        # In a TestCase, the transaction of the test's own it was made in.
        self.scope = scope

    def __call__(self) -> None:
        calls, self.calls, self.index = self.calls, [], None
        self.open, self.previous = False, None
        standing = [call for call in calls if call is not None]
        if standing:
            send(_supersede.settle(standing))

    def add(self, call: Call) -> Call | None:
        """Append a call. A coalescing receiver's earlier call for the same
        row in this group is merged into it; that call is returned."""
        key = _coalescing_key(call)
        if key is None:
            self.calls.append(call)
            return None
        if self.index is None:
            self.index = {}
        replaced = None
        at = self.index.get(key)
        if at is not None:
            replaced, self.calls[at] = self.calls[at], None
            assert replaced is not None
            replaced.merge_into(call)
        self.index[key] = len(self.calls)
        self.calls.append(call)
        return replaced

    def coalesce_into(self, later: _Group) -> None:
        """Merge its coalescing calls into ``later``'s for the same rows: the
        two groups now share their fate."""
        assert self.index is not None
        assert later.index is not None
        for key, at in list(self.index.items()):
            later_at = later.index.get(key)
            if later_at is None:
                continue
            earlier, self.calls[at] = self.calls[at], None
            del self.index[key]
            call = later.calls[later_at]
            assert earlier is not None
            assert call is not None
            earlier.merge_into(call)
            if call.receiver.uses_outbox:
                _outbox.keep_one_row(earlier, call)

    def rewrites_outbox_rows(self, later: _Group) -> bool:
        """Whether coalescing into ``later`` would rewrite outbox rows."""
        if not (self.index and later.index):
            return False
        return any(key[0].uses_outbox for key in self.index if key in later.index)

    def takes(self, open_savepoints: frozenset[str], scope: object) -> bool:
        """Whether a call deferred now may join it."""
        return (
            self.open
            and self.scope == scope
            and self.savepoints & open_savepoints == open_savepoints
        )

    def take_earlier_calls(self, open_savepoints: frozenset[str]) -> None:
        """Take over the calls of the open groups just before this one, where
        Django would now drop them exactly when it drops this one.

        A released savepoint can no longer roll back, so once the savepoints
        that set two neighbouring groups apart are released, one callback
        can carry both groups' calls (imports that use ``get_or_create`` or
        ``update_or_create`` open a savepoint per row).
        """
        previous = self.previous
        if previous is None:
            return
        own = self.savepoints & open_savepoints
        while (
            previous is not None
            and previous.open
            and previous.scope == self.scope
            and previous.savepoints & open_savepoints == own
        ):
            if open_savepoints != own and previous.rewrites_outbox_rows(self):
                # Those writes would be undone by a rollback of the savepoints
                # open since, and the groups would stay merged: not now.
                break
            offset = len(previous.calls)
            if self.index and previous.index:
                previous.coalesce_into(self)
            previous.calls.extend(self.calls)
            if self.index:
                index = previous.index or {}
                index.update((key, at + offset) for key, at in self.index.items())
                previous.index = index
            self.calls, previous.calls = previous.calls, []
            self.index, previous.index = previous.index, None
            previous = previous.previous
        self.previous = previous


def _coalescing_key(call: Call) -> tuple[Any, ...] | None:
    """What makes two calls one, for a coalescing receiver: their row."""
    if not call.receiver.coalesce:
        return None
    row = call.instance_row()
    if row is None:
        return None
    # A proxy's rows are its concrete model's.
    label, pk, alias = row
    return call.receiver, concrete_label(label), pk, alias


def _defer(connection: BaseDatabaseWrapper, call: Call) -> Call | None:
    """Defer ``call`` to the commit; the earlier call it replaced, if any."""
    open_savepoints = frozenset(filter(None, connection.savepoint_ids))
    blocks = connection.atomic_blocks
    if getattr(blocks[-1], "_from_testcase", False):
        # Only the transaction a TestCase wraps each test in is open: where
        # this code would run in autocommit, each call is sent on its own. A
        # callback per call, that no later call joins, keeps
        # captureOnCommitCallbacks exact too.
        group = _Group(open_savepoints, None)
        group.add(call)
        group.open = False
        connection.on_commit(group)
        return None
    scope = _test_scope(connection) if _from_testcase(blocks[0]) else None
    hooks = connection.run_on_commit
    last = hooks[-1][1] if hooks else None
    if isinstance(last, _Group) and last.open and last.scope == scope:
        last.take_earlier_calls(open_savepoints)
        if last.takes(open_savepoints, scope):
            return last.add(call)
    else:
        last = None
    group = _Group(open_savepoints, last, scope)
    group.add(call)
    connection.on_commit(group)
    return None


def _from_testcase(block: Atomic) -> bool:
    return bool(getattr(block, "_from_testcase", False))


def _test_scope(connection: BaseDatabaseWrapper) -> object:
    """In a TestCase, which of the test's own transactions is open: what would
    be a transaction of its own outside the test.

    Groups made in one never take calls of another, as they could not if
    each committed, so captureOnCommitCallbacks sees each as it would.
    """
    for index, block in enumerate(connection.atomic_blocks):
        if not _from_testcase(block):
            # Nested in the test's transaction: the block has a savepoint,
            # unless it was opened with savepoint=False. (A weak reference,
            # not id(): a later block may get the id of one that is gone.)
            return connection.savepoint_ids[index - 1] or weakref.ref(block)
    raise AssertionError("no block of the test's own is open")  # pragma: no cover
