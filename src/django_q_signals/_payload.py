"""What a queued call carries, and how a worker turns it back into arguments.

When the signal fires, each argument is recorded as it is at that moment, in
the smallest form a worker can rebuild it from:

- a saved model instance: its label, pk and database (the worker loads the
  row again);
- a model class: its label;
- a QuerySet: None (pickling it would run the query);
- a value that cannot change and that any Python unpickles (None, booleans,
  numbers, strings, bytes, dates and times, Decimal, UUID, and tuples and
  frozensets of those): kept as it is;
- anything else, and an instance that is not saved yet or that the receiver
  takes snapshots of: pickled on its own, or left out with a WARNING if it
  cannot be.

A call is one flat tuple, ``(signal index, layout, sender, value, ...)``. Its
layout is the kwarg names and a letter per sender and value saying how to
rebuild it: a number for the usual layouts of Django's model signals, the
pair itself for any other. A task's argument is ``(FORMAT, receiver name,
database alias or None for the default one, call)``, or a tuple of calls for
a batch: builtin types only, so Django Q2 always unpickles a task, and a
value that cannot be unpickled fails its own call and no other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sys
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from uuid import UUID
from zoneinfo import ZoneInfo

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model
from django.db.models.base import ModelBase
from django.db.models.query import QuerySet
from django.db.models.signals import post_save, pre_save
from django.dispatch import Signal

if TYPE_CHECKING:
    from django_q_signals._registry import Receiver

logger = logging.getLogger("django_q_signals")

#: Bumped whenever the layout changes: a worker refuses a task of another
#: format instead of misreading it.
FORMAT = 3

# How each sender and value of a call is rebuilt.
PLAIN = "v"  # as it is
PICKLED = "p"  # pickled bytes
MODEL = "m"  # a model class: its label
ROW = "r"  # a saved instance: (label, pk, database)
OWN_ROW = "s"  # a saved instance of the sender's model, on the call's database: pk
ITS_SENDER = "S"  # the receiver's own sender model: nothing more
ITS_DATABASE = "d"  # the name of the call's database: nothing more

#: A call: ``(signal index, layout, sender, value, ...)``.
CallData = tuple[Any, ...]
#: A call's kwarg names, and a letter per sender and value saying how it is
#: recorded.
Layout = tuple[tuple[str, ...], str]
#: A saved instance as a call records it: its model's label, pk and database.
RowId = tuple[str, Any, str]
#: A task's argument: ``(FORMAT, receiver name, database alias or None for
#: the default one, call)``, or with a tuple of calls for a batch.
TaskArgument = tuple[int, str, str | None, CallData | tuple[CallData, ...]]

_POST_SAVE = ("instance", "created", "update_fields", "raw", "using")
_PRE_SAVE = ("instance", "raw", "using", "update_fields")
_DELETE = ("instance", "using", "origin")
_M2M = ("action", "instance", "reverse", "model", "pk_set", "using")
_M2M_RAW = (*_M2M, "raw")  # Django 6.1

#: The usual kwargs of Django's model signals, and how they are recorded
#: (the sender's kind first): a call names its layout by number. Part of
#: FORMAT: never reorder, only append.
LAYOUTS: tuple[Layout, ...] = (
    ((), ""),
    (_POST_SAVE, "Ssvvvd"),
    (_POST_SAVE, "msvvvd"),
    (_PRE_SAVE, "Ssvdv"),
    (_PRE_SAVE, "Spvdv"),  # on create: the instance as it is
    (_PRE_SAVE, "msvdv"),
    (_PRE_SAVE, "mpvdv"),
    (_DELETE, "Ssds"),  # origin: the instance
    (_DELETE, "Ssdv"),  # origin: a QuerySet
    (_DELETE, "msds"),
    (_DELETE, "msdv"),
    (_M2M, "Svrvmpd"),
    (_M2M, "Svrvmvd"),  # a clear: no pk_set
    (_M2M_RAW, "Svrvmpdv"),
    (_M2M_RAW, "Svrvmvdv"),
    # With previous= (plain values): a save, a create's pre_save.
    ((*_POST_SAVE, "previous"), "Ssvvvdv"),
    ((*_PRE_SAVE, "previous"), "Ssvdvv"),
    ((*_PRE_SAVE, "previous"), "Spvdvv"),
)
_LAYOUT_NUMBERS = {layout: number for number, layout in enumerate(LAYOUTS) if number}

_PLAIN_TYPES = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        Decimal,
        UUID,
        date,
        datetime,
        time,
        timedelta,
    }
)

_PLAIN_TZINFO = frozenset({timezone, ZoneInfo})

#: Each model's label, made once: ``_meta.label`` builds a new string each time.
_labels: dict[type[Model], str] = {}


def _label(model: type[Model]) -> str:
    label = _labels.get(model)
    if label is None:
        label = _labels[model] = sys.intern(model._meta.label)
    return label


#: The label of the concrete model behind each model label (a proxy's own).
_concrete_labels: dict[str, str] = {}


def concrete_label(label: str) -> str:
    """The label of the model whose table holds rows of model ``label``."""
    found = _concrete_labels.get(label)
    if found is None:
        model = apps.get_model(label)
        concrete = model._meta.concrete_model or model
        found = _concrete_labels[label] = sys.intern(concrete._meta.label)
    return found


class Call:
    """One signal, as a receiver queues it."""

    __slots__ = ("alias", "data", "outbox_id", "pickled_instance", "receiver")

    def __init__(
        self,
        receiver: Receiver,
        alias: str,
        data: CallData,
        outbox_id: int | None = None,
    ) -> None:
        self.receiver = receiver
        #: The database whose commit it waits for.
        self.alias = alias
        #: ``(signal index, layout, sender, value, ...)``.
        self.data = data
        #: The pk of its outbox row, if it has one.
        self.outbox_id = outbox_id
        #: The label and pk of its ``instance`` kwarg where that was pickled
        #: (a snapshot, or a row being created) and has a pk: its outbox row
        #: names that row, though the worker gets the instance as it was.
        self.pickled_instance: tuple[str, Any] | None = None

    def __str__(self) -> str:
        rows = ", ".join(
            f"{name}=<{label} pk={pk!r}>" for name, (label, pk, _) in self.rows()
        )
        return f"{self.receiver.name}({rows})"

    @property
    def layout(self) -> Layout:
        """The kwarg names, and how the sender and each value are recorded."""
        return layout_of(self.data)

    def value(self, name: str) -> Any:
        """The recorded value of kwarg ``name``, as the call holds it."""
        return self.data[3 + self.layout[0].index(name)]

    def rows(self) -> Iterator[tuple[str, RowId]]:
        """The saved instances among the kwargs: name, and (label, pk, db)."""
        names, kinds = self.layout
        for name, kind, value in zip(names, kinds[1:], self.data[3:], strict=True):
            if kind == ROW:
                yield name, value
            elif kind == OWN_ROW:
                yield name, (self._sender_label(kinds[0]), value, self.alias)

    def _sender_label(self, kind: str) -> str:
        if kind == ITS_SENDER:
            return self.receiver.sender_label
        return cast("str", self.data[2])

    def instance_row(self) -> RowId | None:
        """The row its ``instance`` kwarg refers to, if a saved one."""
        return next((row for name, row in self.rows() if name == "instance"), None)

    def instance_pk(self) -> tuple[str, Any] | None:
        """The model label and pk of its ``instance`` kwarg, loaded again by
        the worker or pickled; None without one, or without a pk."""
        row = self.instance_row()
        return self.pickled_instance if row is None else (row[0], row[1])

    def payload(self) -> TaskArgument:
        """What a task for this call alone carries."""
        return (FORMAT, self.receiver.name, _database(self.alias), self.data)

    def merge_into(self, later: Call) -> None:
        """Make ``later`` the one call for both. Where both are a model's
        pre_save or post_save and ``later`` has them: created if either was,
        the union of their update_fields: None (every field) if either's
        was None, or was not a set of names, as in a save sent by hand; and
        the earlier's ``previous``: the values before the first save."""
        if not (self._is_a_save() and later._is_a_save()):
            return
        mine = self._plain_values()
        theirs = later._plain_values()
        data = list(later.data)
        names, kinds = later.layout
        kind_of = list(kinds)
        if mine.get("created") is True and "created" in theirs:
            data[3 + names.index("created")] = True
        if "previous" in names and "previous" in self.layout[0]:
            at = names.index("previous")
            data[3 + at] = self.value("previous")
            kind_of[1 + at] = self.layout[1][1 + self.layout[0].index("previous")]
        if "update_fields" in names:
            at = names.index("update_fields")
            a, b = mine.get("update_fields"), theirs.get("update_fields")
            merged: frozenset[str] | None = None
            if isinstance(a, frozenset) and isinstance(b, frozenset):
                merged = a | b
            data[3 + at] = merged
            kind_of[1 + at] = PLAIN  # A list, where sent by hand.
        if "".join(kind_of) != kinds:
            data[1] = _layout_ref(names, "".join(kind_of))
        later.data = tuple(data)

    def _is_a_save(self) -> bool:
        return self.receiver.signals[self.data[0]] in (pre_save, post_save)

    def _plain_values(self) -> dict[str, Any]:
        """The kwargs kept as they are, by name."""
        names, kinds = self.layout
        return {
            name: value
            for name, kind, value in zip(names, kinds[1:], self.data[3:], strict=True)
            if kind == PLAIN
        }


def layout_of(data: CallData) -> Layout:
    layout = data[1]
    if isinstance(layout, int):
        return LAYOUTS[layout]
    names, kinds = layout
    return tuple(names), kinds


def _database(alias: str) -> str | None:
    """How a task names a database: None for the default one."""
    return None if alias == DEFAULT_DB_ALIAS else alias


def batch_payload(calls: list[Call]) -> TaskArgument:
    """What a task for a batch of one receiver's calls on one database carries."""
    first = calls[0]
    data = tuple(call.data for call in calls)
    return (FORMAT, first.receiver.name, _database(first.alias), data)


def encode_call(
    receiver: Receiver, signal: Signal, sender: Any, kwargs: dict[str, Any]
) -> Call:
    """``receiver``'s call for a signal: its sender and kwargs recorded as
    they are now, each in the smallest form a worker rebuilds it from."""
    using = kwargs.get("using")
    # A custom signal may mean something else by using: then the call
    # follows its instances' database.
    alias = using if isinstance(using, str) and using in connections.settings else None
    snapshot = receiver.snapshot
    own_label: str | None
    if sender is not None and sender is receiver.sender_model:
        kinds, sender_value = [ITS_SENDER], None
        own_label = receiver.sender_label
    else:
        encoded_sender = _encode(receiver, "sender", sender, snapshot)
        kind, sender_value = encoded_sender or (PLAIN, None)
        kinds = [kind]
        # Only a model sent as sender names the model of its rows.
        own_label = sender_value if kind == MODEL else None
    names = []
    values = []
    pickled_instance = None
    for name, value in kwargs.items():
        if name == "previous" and receiver.previous and _is_plain_dict(value):
            # Made for this call alone, so it cannot change: kept as it is.
            encoded: tuple[str, Any] | None = PLAIN, value
        else:
            encoded = _encode(receiver, name, value, snapshot)
        if encoded is not None:
            names.append(name)
            kinds.append(encoded[0])
            values.append(encoded[1])
            if encoded[0] == PICKLED and name == "instance":
                pickled_instance = _label_and_pk(value)
    if alias is None:
        alias = _database_of_rows(kinds, values)
    for index, (kind, value) in enumerate(zip(kinds[1:], values, strict=True)):
        if kind == ROW and value[0] == own_label and value[2] == alias:
            # The sender's model on this database: its pk says it all.
            kinds[index + 1], values[index] = OWN_ROW, value[1]
        elif kind == PLAIN and value == alias and type(value) is str:
            kinds[index + 1], values[index] = ITS_DATABASE, None
    data = (
        receiver.signals.index(signal),
        _layout_ref(tuple(names), "".join(kinds)),
        sender_value,
        *values,
    )
    call = Call(receiver, alias, data)
    call.pickled_instance = pickled_instance
    return call


def _database_of_rows(kinds: list[str], values: list[Any]) -> str:
    """The database of the first saved instance among a call's values, or
    the default one."""
    return next(
        (v[2] for k, v in zip(kinds[1:], values, strict=True) if k == ROW and v[2]),
        DEFAULT_DB_ALIAS,
    )


def _is_plain_dict(value: Any) -> bool:
    return type(value) is dict and all(map(is_plain, value.values()))


def _label_and_pk(value: Any) -> tuple[str, Any] | None:
    """A model instance's label and pk, if it has a pk."""
    if isinstance(value, Model):
        pk = saved_pk(value)
        if pk is not None:
            return _label(type(value)), pk
    return None


def _layout_ref(names: tuple[str, ...], kinds: str) -> int | Layout:
    """How a call names its layout: by number if it is a usual one."""
    number = _LAYOUT_NUMBERS.get((names, kinds))
    if number is None:
        return (tuple(map(sys.intern, names)), sys.intern(kinds))
    return number


def _encode(
    receiver: Receiver, name: str, value: Any, snapshot: bool
) -> tuple[str, Any] | None:
    """How a value is recorded: its kind and form, or None to leave it out."""
    if is_plain(value):
        return PLAIN, value
    if isinstance(value, Model):
        if not (snapshot or value._state.adding):
            pk = saved_pk(value)
            if pk is not None:
                return ROW, (_label(type(value)), pk, value._state.db)
    elif isinstance(value, ModelBase):
        return MODEL, _label(cast("type[Model]", value))
    elif isinstance(value, QuerySet):
        return PLAIN, None
    try:
        return PICKLED, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        receiver.warn_once(
            name,
            "%s: %r cannot be pickled (%s: %s), so it is not passed to the "
            "worker; the handler will get %s.",
            receiver.name,
            name,
            type(exc).__name__,
            exc,
            "sender=None" if name == "sender" else f"no {name!r}",
        )
        return None


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether a value cannot change and any Python unpickles it."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        # A date or time is plain with no time zone or a standard one: any
        # other tzinfo is pickled on its own, and left out if it cannot be.
        tzinfo = getattr(value, "tzinfo", None)
        return tzinfo is None or type(tzinfo) in _PLAIN_TZINFO
    if (kind is tuple or kind is frozenset) and depth < 3:
        return all(is_plain(item, depth + 1) for item in value)
    return False


def saved_pk(instance: Model) -> Any:
    """The pk as the database gives it back (``"42"`` -> ``42``), or None."""
    pk = instance.pk
    if pk is None or (isinstance(pk, tuple) and None in pk):
        return None
    try:
        return _to_python(instance._meta.pk, pk)
    except (ValidationError, ValueError, TypeError):
        return pk  # No row can have it; the worker finds none.


#: The longest pk text the outbox's ``object_pk`` column holds as it is: a
#: varchar that MySQL can index whole, next to the model's label.
PK_TEXT_AT_MOST = 255
DIGEST_MARK = "…sha256:"
# The start of a longer pk's text that its digest form keeps.
_KEPT = PK_TEXT_AT_MOST - len(DIGEST_MARK) - 64


def canonical_pk(pk: Any) -> str:
    """A pk as text, the same for every value of one row's pk, and at most
    PK_TEXT_AT_MOST characters: a longer one (a URL, a long composite pk) is
    its start and a SHA-256 of the whole, so that it fits the outbox's column
    and still finds its row's calls."""
    pk = _normalized(pk)
    text = json.dumps([str(p) for p in pk]) if isinstance(pk, tuple) else str(pk)
    if len(text) <= PK_TEXT_AT_MOST:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[:_KEPT]}{DIGEST_MARK}{digest}"


def _normalized(pk: Any) -> Any:
    """A pk (as its field's ``to_python()`` gives it) with one form for
    values the database holds as one: ``Decimal("1.50")`` is ``1.5``."""
    if isinstance(pk, tuple):
        return tuple(map(_normalized, pk))
    if isinstance(pk, Decimal):
        # Without trailing zeros or an exponent: 100, not 1E+2.
        return Decimal(format(pk.normalize(), "f"))
    return pk


def _to_python(field: Any, pk: Any) -> Any:
    if isinstance(pk, tuple):  # A composite primary key.
        return tuple(
            part.to_python(value) for part, value in zip(field.fields, pk, strict=True)
        )
    return field.to_python(pk)


def can_be_stored(field: Any, pk: Any) -> bool:
    try:
        _to_python(field, pk)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


# The worker's side.


class Row(NamedTuple):
    """A saved model instance to load again."""

    label: str
    pk: Any
    db: str | None

    def __str__(self) -> str:
        return f"{self.label} pk={self.pk!r}"


class ModelClass(NamedTuple):
    label: str


class Payload(NamedTuple):
    """A task's argument (or an outbox row's call) as read, before its calls
    are opened."""

    receiver_name: str
    alias: str
    body: Any


class Arguments(NamedTuple):
    """A call's signal, sender and kwargs as recorded, values unpickled."""

    signal_index: int
    sender: Any
    kwargs: dict[str, Any]


def read(payload: Any) -> Payload:
    """The receiver and database a task is for; raises ValueError if it is
    not a task of this version."""
    if not (isinstance(payload, tuple) and payload and isinstance(payload[0], int)):
        raise ValueError(f"Not a django-q-signals payload: {_short(payload)}")
    if payload[0] != FORMAT:
        raise ValueError(
            f"Payload format {payload[0]!r} is not {FORMAT}: was it queued by "
            "another version of django-q-signals?"
        )
    try:
        _, receiver_name, alias, body = payload
    except ValueError as exc:
        raise ValueError(f"Not a django-q-signals payload: {exc}") from exc
    if not (isinstance(receiver_name, str) and isinstance(alias, (str, type(None)))):
        raise ValueError(f"Not a django-q-signals payload: {_short(payload)}")
    return Payload(receiver_name, alias or DEFAULT_DB_ALIAS, body)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def open_call(data: Any, receiver: Receiver, alias: str) -> Arguments:
    """A call's arguments; raises ValueError if they cannot be rebuilt."""
    try:
        signal_index, _, sender, *values = data
        names, kinds = layout_of(data)
        if len(kinds) != len(values) + 1 or len(names) != len(values):
            raise ValueError(f"{len(values)} values for {names} ({kinds})")
        sender_label: str | None
        sender_value: Any
        if kinds[0] == ITS_SENDER:
            sender_label = receiver.sender_label
            sender_value = ModelClass(sender_label)
        else:
            sender_label = sender if kinds[0] == MODEL else None
            sender_value = _decode(kinds[0], sender, None, alias)
        kwargs = {
            name: _decode(kind, value, sender_label, alias)
            for name, kind, value in zip(names, kinds[1:], values, strict=True)
        }
        return Arguments(signal_index, sender_value, kwargs)
    except Exception as exc:
        raise ValueError(
            f"Could not unpickle its arguments: {type(exc).__name__}: {exc}"
        ) from exc


def _decode(kind: str, value: Any, sender_label: str | None, alias: str) -> Any:
    if kind == PLAIN:
        return value
    if kind == PICKLED:
        return pickle.loads(value)
    if kind == MODEL:
        return ModelClass(value)
    if kind == ROW:
        return Row(*value)
    if kind == OWN_ROW:
        return Row(cast("str", sender_label), value, alias)
    if kind == ITS_DATABASE:
        return alias
    raise ValueError(f"unknown kind {kind!r}")


def describe_rows(kwargs: dict[str, Any]) -> str:
    """The rows a call refers to, for logs: ``instance=<app.Model pk=1>``."""
    return ", ".join(
        f"{name}=<{value}>" for name, value in kwargs.items() if isinstance(value, Row)
    )
