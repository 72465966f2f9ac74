"""The worker's rows: the model instances a task's calls refer to, loaded
again from the database, one query per model and database for a whole
batch, and the arguments a handler is called with."""

from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.db import router
from django.db.models import Model
from django.db.models.query import QuerySet

from django_q_signals._payload import Arguments, ModelClass, Row, can_be_stored

if TYPE_CHECKING:
    from django_q_signals._registry import Receiver

logger = logging.getLogger("django_q_signals")

#: Which query loads a row: its model's label, its database, and whether
#: with the receiver's select_related and prefetch_related.
Query = tuple[str, str, bool]


class Rows:
    """The rows a batch of calls refers to, loaded with one query per model.

    Loaded with the model's ``_base_manager`` from the database each row came
    from; ``instance`` also with the receiver's select/prefetch_related.
    """

    def __init__(self, receiver: Receiver, batch: list[Arguments]) -> None:
        self._receiver = receiver
        self._keys: dict[tuple[str, str, str | None], Query] = {}
        wanted: dict[Query, set[Any]] = {}
        # How many calls still want each row: all but the last get a copy.
        self._uses: Counter[tuple[Query, Any]] = Counter()
        for arguments in batch:
            for name, value in [
                ("sender", arguments.sender),
                *arguments.kwargs.items(),
            ]:
                if isinstance(value, Row):
                    key = self._key(name, value)
                    wanted.setdefault(key, set()).add(value.pk)
                    self._uses[key, value.pk] += 1
        self._found = {key: self._load(key, pks) for key, pks in wanted.items()}

    def _key(self, name: str, row: Row) -> Query:
        """Which query loads ``row``: its model, database, and whether with
        the receiver's relations."""
        try:
            return self._keys[name, row.label, row.db]
        except KeyError:
            pass
        model = apps.get_model(row.label)
        db = row.db or router.db_for_read(model)
        # The relations apply to the model they were written for only: an
        # m2m_changed from the other side sends an instance of the other model.
        related = name == "instance" and model is self._receiver.related_model
        key = self._keys[name, row.label, row.db] = (row.label, db, related)
        return key

    def _load(self, key: Query, pks: set[Any]) -> dict[Any, Model]:
        label, db, related = key
        model = apps.get_model(label)
        # A pk no row can have (a value of the wrong type) finds no row.
        found = [pk for pk in pks if can_be_stored(model._meta.pk, pk)]
        rows = model._base_manager.using(db)
        if related:
            receiver = self._receiver
            if receiver.select_related:
                rows = rows.select_related(*receiver.select_related)
            if receiver.prefetch_related:
                rows = rows.prefetch_related(*receiver.prefetch_related)
        if len(found) == 1:  # A cheaper query to build.
            loaded = {row.pk: row for row in rows.filter(pk=found[0])}
        else:
            loaded = {row.pk: row for row in rows.filter(pk__in=found)}
        missing = [pk for pk in found if pk not in loaded]
        if missing and loaded:
            _match_as_the_database_did(rows, missing, loaded, found)
        return loaded

    def get(self, name: str, row: Row) -> Model | None:
        key = self._key(name, row)
        found = self._found[key].get(row.pk)
        if found is None:
            logger.info(
                "%s: %s <%s> no longer exists in %r; the handler gets %s=None",
                self._receiver.name,
                name,
                row,
                key[1],
                name,
            )
            return None
        self._uses[key, row.pk] -= 1
        if self._uses[key, row.pk]:
            # Each call gets its own instance, as it would unbatched.
            return copy.copy(found)
        return found


def _match_as_the_database_did(
    rows: QuerySet[Model],
    missing: list[Any],
    loaded: dict[Any, Model],
    asked: list[Any],
) -> None:
    """Add to ``loaded`` the rows the ``missing`` pks found, though no row's
    pk is equal to them in Python: MySQL's and MariaDB's usual collations
    ignore case and trailing spaces (and accents), so ``"ABC"`` finds the
    row ``"abc"``. No query for a deleted row's pk, as a rule."""
    asked_for = set(asked)
    others = [row for pk, row in loaded.items() if pk not in asked_for]
    if len(others) == 1 and len(missing) == 1:
        # No other pk asked for can have found it.
        loaded[missing[0]] = others[0]
        return
    if not others:
        # Each row is some pk's own: another pk asked for (a batch with both
        # "abc" and "ABC") may still find one as the database compares.
        near = {_loosely(pk) for pk in loaded}
        missing = [pk for pk in missing if _loosely(pk) in near]
    for pk in missing:
        # Looked up alone, the database says which row is its.
        row = next(iter(rows.filter(pk=pk)), None)
        if row is not None:
            loaded[pk] = row


def _loosely(pk: Any) -> Any:
    """A pk as a case- and trailing-space-insensitive collation sees it."""
    if isinstance(pk, str):
        return pk.rstrip(" ").casefold()
    if isinstance(pk, tuple):
        return tuple(map(_loosely, pk))
    return pk


def rebuild(
    receiver: Receiver, arguments: Arguments, rows: Rows
) -> tuple[Any, dict[str, Any]]:
    """The ``sender`` and kwargs to call the handler with."""
    kwargs = {}
    for name, value in arguments.kwargs.items():
        kwargs[name] = _rebuilt(rows, name, value)
        if kwargs[name] is None and isinstance(value, Row):
            kwargs[f"_{name}_pk"] = value.pk
    return _rebuilt(rows, "sender", arguments.sender), kwargs


def _rebuilt(rows: Rows, name: str, value: Any) -> Any:
    if isinstance(value, Row):
        return rows.get(name, value)
    if isinstance(value, ModelClass):
        return apps.get_model(value.label)
    return value
