"""What a queued call carries, and how a worker turns it back into arguments.

The signal side turns every argument into something small and picklable and
pickles the lot at once, so that what is queued is what the signal sent at
that moment, whatever happens to the objects afterwards:

- a saved model instance becomes its label, pk and database alias, and the
  worker loads the row again;
- a model class becomes its label;
- a QuerySet becomes None (pickling it would run the query);
- an unsaved instance, or any instance when the receiver takes snapshots,
  is pickled as it is;
- everything else is pickled as it is, and dropped with a warning if it
  cannot be.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connections, router
from django.db.models import Model
from django.db.models.base import ModelBase
from django.db.models.query import QuerySet
from django.dispatch import Signal

if TYPE_CHECKING:
    from django_q_signals._registry import Receiver

logger = logging.getLogger("django_q_signals")

# Bumped whenever the layout below changes, so a worker running another
# version refuses a payload instead of misreading it.
FORMAT = 2


class Row(NamedTuple):
    """A saved model instance, loaded again by the worker."""

    label: str
    pk: Any
    db: str | None

    def __str__(self) -> str:
        return f"{self.label} pk={self.pk!r}"


class ModelClass(NamedTuple):
    label: str


class Call:
    """One signal, as a receiver queues it."""

    __slots__ = ("alias", "arguments", "outbox_id", "payload", "receiver")

    def __init__(
        self,
        receiver: Receiver,
        payload: bytes,
        alias: str,
        arguments: dict[str, Any],
        outbox_id: int | None = None,
    ) -> None:
        self.receiver = receiver
        self.payload = payload
        self.alias = alias
        self.arguments = arguments
        #: The pk of its outbox row, if it has one.
        self.outbox_id = outbox_id

    def __str__(self) -> str:
        return f"{self.receiver.key}({describe_rows(self.arguments)})"


def describe_rows(arguments: dict[str, Any]) -> str:
    """The rows a call refers to, for logs: ``instance=<app.Model pk=1>``."""
    return ", ".join(
        f"{name}=<{value}>"
        for name, value in arguments.items()
        if isinstance(value, Row)
    )


def encode_call(
    receiver: Receiver, signal: Signal, sender: Any, kwargs: dict[str, Any]
) -> Call | None:
    snapshot = receiver.snapshot
    arguments = {name: _encode(value, snapshot) for name, value in kwargs.items()}
    alias = kwargs.get("using")
    if not (isinstance(alias, str) and alias in connections.settings):
        # No using, or a custom signal's own meaning of the word.
        alias = next(
            (v.db for v in arguments.values() if isinstance(v, Row) and v.db),
            DEFAULT_DB_ALIAS,
        )
    sender = _encode(sender, snapshot)
    try:
        blob = _dumps((sender, arguments))
    except Exception:
        # Rare: find what cannot be pickled, leave it out and say so.
        sender, arguments = _picklable(receiver, sender, arguments)
        try:
            blob = _dumps((sender, arguments))
        except Exception:
            logger.exception(
                "Could not pickle a call to %s; it is not queued", receiver
            )
            return None
    # The receiver is pickled apart from the arguments, so that a worker
    # that cannot unpickle them still knows whose call failed.
    header = (FORMAT, receiver.key, receiver.module, receiver.signals.index(signal))
    return Call(receiver, _dumps((*header, blob)), alias, arguments)


class Queued(NamedTuple):
    """A payload as the worker unpickles it, before its arguments."""

    key: str
    module: str
    signal_index: int
    blob: bytes


class Arguments(NamedTuple):
    """A call's sender and kwargs as queued, before instances are loaded."""

    sender: Any
    kwargs: dict[str, Any]


def load(payload: bytes) -> Queued:
    try:
        version, *fields = pickle.loads(payload)
    except Exception as exc:
        raise ValueError(f"Not a django-q-signals payload: {exc}") from exc
    if not isinstance(version, int):
        raise ValueError(f"Not a django-q-signals payload: it starts with {version!r}")
    if version != FORMAT:
        raise ValueError(
            f"Payload format {version!r} is not {FORMAT}: was it queued by another "
            "version of django-q-signals?"
        )
    try:
        return Queued(*fields)
    except TypeError as exc:
        raise ValueError(f"Not a django-q-signals payload: {exc}") from exc


def load_arguments(queued: Queued) -> Arguments:
    try:
        return Arguments(*pickle.loads(queued.blob))
    except Exception as exc:
        raise ValueError(
            f"Could not unpickle its arguments: {type(exc).__name__}: {exc}"
        ) from exc


class Rows:
    """The rows a batch of calls refers to, loaded with one query per model.

    Loaded with the model's ``_base_manager`` from the database each row came
    from; ``instance`` also with the receiver's select/prefetch_related.
    """

    def __init__(self, receiver: Receiver, batch: list[Arguments]) -> None:
        self._receiver = receiver
        wanted: dict[tuple[str, str, bool], set[Any]] = {}
        # How many calls still want each row: all but the last get a copy.
        self._uses: Counter[tuple[tuple[str, str, bool], Any]] = Counter()
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

    def _key(self, name: str, row: Row) -> tuple[str, str, bool]:
        model = apps.get_model(row.label)
        db = row.db or router.db_for_read(model)
        # The relations apply to the model they were written for only: an
        # m2m_changed from the other side sends an instance of the other model.
        related = name == "instance" and model is self._receiver.related_model
        return row.label, db, related

    def _load(self, key: tuple[str, str, bool], pks: set[Any]) -> dict[Any, Model]:
        label, db, related = key
        model = apps.get_model(label)
        # A pk no row can have (a value of the wrong type) finds no row.
        pks = {pk for pk in pks if _can_be_stored(model._meta.pk, pk)}
        queryset = model._base_manager.using(db).filter(pk__in=list(pks))
        if related:
            receiver = self._receiver
            if receiver.select_related:
                queryset = queryset.select_related(*receiver.select_related)
            if receiver.prefetch_related:
                queryset = queryset.prefetch_related(*receiver.prefetch_related)
        return {row.pk: row for row in queryset}

    def get(self, name: str, row: Row) -> Model | None:
        key = self._key(name, row)
        found = self._found[key].get(row.pk)
        if found is None:
            logger.info(
                "%s: %s <%s> no longer exists in %r; the handler gets %s=None",
                self._receiver.key,
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


def rebuild(
    receiver: Receiver, arguments: Arguments, rows: Rows
) -> tuple[Any, dict[str, Any]]:
    """The ``sender`` and kwargs to call the handler with."""
    kwargs = {}
    for name, value in arguments.kwargs.items():
        kwargs[name] = _decode(rows, name, value)
        if kwargs[name] is None and isinstance(value, Row):
            kwargs[f"_{name}_pk"] = value.pk
    return _decode(rows, "sender", arguments.sender), kwargs


def _dumps(data: Any) -> bytes:
    return pickle.dumps(data, pickle.HIGHEST_PROTOCOL)


def _encode(value: Any, snapshot: bool) -> Any:
    if isinstance(value, Model):
        if snapshot or value._state.adding:
            return value
        pk = saved_pk(value)
        if pk is None:
            return value
        return Row(value._meta.label, pk, value._state.db)
    if isinstance(value, ModelBase):
        return ModelClass(cast("type[Model]", value)._meta.label)
    if isinstance(value, QuerySet):
        return None
    return value


def saved_pk(instance: Model) -> Any:
    """The pk as the database gives it back (``"42"`` -> ``42``), or None."""
    pk = instance.pk
    if pk is None or (isinstance(pk, tuple) and None in pk):
        return None
    try:
        return _to_python(instance._meta.pk, pk)
    except (ValidationError, ValueError, TypeError):
        return pk  # No row can have it; the worker finds none.


def canonical_pk(pk: Any) -> str:
    """A pk as text, the same for every value of one row's pk."""
    if isinstance(pk, tuple):
        return json.dumps([str(part) for part in pk])
    return str(pk)


def _to_python(field: Any, pk: Any) -> Any:
    if isinstance(pk, tuple):  # A composite primary key.
        return tuple(
            part.to_python(value) for part, value in zip(field.fields, pk, strict=True)
        )
    return field.to_python(pk)


def _can_be_stored(field: Any, pk: Any) -> bool:
    try:
        _to_python(field, pk)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _picklable(
    receiver: Receiver, sender: Any, arguments: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """``sender`` and ``arguments`` without what cannot be pickled."""
    if not _can_pickle(receiver, "sender", sender):
        sender = None
    kept = {k: v for k, v in arguments.items() if _can_pickle(receiver, k, v)}
    return sender, kept


def _can_pickle(receiver: Receiver, name: str, value: Any) -> bool:
    try:
        _dumps(value)
    except Exception as exc:
        receiver.warn_once(
            name,
            "%s: %r cannot be pickled (%s: %s), so it is not passed to the "
            "worker; the handler will get %s.",
            receiver.key,
            name,
            type(exc).__name__,
            exc,
            "sender=None" if name == "sender" else f"no {name!r}",
        )
        return False
    return True


def _decode(rows: Rows, name: str, value: Any) -> Any:
    if isinstance(value, Row):
        return rows.get(name, value)
    if isinstance(value, ModelClass):
        return apps.get_model(value.label)
    return value
