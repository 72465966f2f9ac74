"""The outbox rows of ``outbox=True`` receivers: written with the data, marked
sent, claimed by the worker that runs them, and deleted when they ran.

The model is imported inside the functions: the package works without the
app in ``INSTALLED_APPS`` for receivers that do not use the outbox.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.utils import timezone

from django_q_signals._payload import (
    Call,
    canonical_pk,
    concrete_label,
    read,
    saved_pk,
)

if TYPE_CHECKING:
    from django.db.models import Field, Model

    from django_q_signals._registry import Receiver
    from django_q_signals.models import OutboxCallQuerySet

logger = logging.getLogger("django_q_signals")

T = TypeVar("T")

#: Where a queued call's row is: its database alias and its pk.
Ref = tuple[str, int]


def require_app(receiver: Receiver) -> None:
    """Refuse an outbox receiver's call where the outbox cannot exist: raised
    in the signal, before the call could be written or lost."""
    if not apps.is_installed("django_q_signals"):
        raise ImproperlyConfigured(missing_app_message(receiver.name))


def missing_app_message(receiver_name: str) -> str:
    return (
        f"{receiver_name} keeps its calls in the outbox (outbox=True, or "
        "Q_SIGNALS['OUTBOX']), but 'django_q_signals' is not in INSTALLED_APPS, "
        "so the outbox table does not exist. Add 'django_q_signals' to "
        "INSTALLED_APPS and run migrate, or give the receiver outbox=False."
    )


def write(call: Call, replacing: Call | None = None) -> None:
    """Write the call's row, in the transaction its signal fired in; or,
    where it took an earlier call's place (coalesced), rewrite that one's.

    Where the table is missing (the app not migrated on that database), the
    call is queued without the outbox and an ERROR says so.
    """
    from django_q_signals.models import OutboxCall

    alias = call.alias
    if replacing is not None and replacing.outbox_id is not None:
        rows = OutboxCall.objects.using(alias).filter(pk=replacing.outbox_id)
        rows.update(payload=pack(call))
        call.outbox_id = replacing.outbox_id
        return
    if not _has_table_or_say_so(alias):
        return
    model_label = object_pk = ""
    instance = call.instance_pk()
    if instance is not None:
        model_label, object_pk = concrete_label(instance[0]), canonical_pk(instance[1])
    call.outbox_id = _insert(
        alias, call.receiver.name, model_label, object_pk, pack(call)
    )


#: Per database: the INSERT of an outbox row, whether it returns the pk, and
#: the values of its constant columns, ready for the database.
_inserts: dict[str, tuple[str, bool, list[Any]]] = {}


def _insert(
    alias: str, receiver: str, model_label: str, object_pk: str, payload: bytes
) -> int:
    """One INSERT, and the row's pk: it runs inside users' save() calls, so
    without the model's save() or bulk_create() machinery (and no model
    signals: writing an outbox row is not the project's business)."""
    from django_q_signals.models import OutboxCall

    connection = connections[alias]
    if connection.vendor not in ("postgresql", "sqlite", "mysql"):  # pragma: no cover
        # Oracle and third-party backends: their own SQL, through the ORM.
        row = OutboxCall(
            receiver=receiver, model=model_label, object_pk=object_pk, payload=payload
        )
        row.save(using=alias)
        return int(row.pk)
    if alias not in _inserts:
        _inserts[alias] = _insert_statement(connection)
    sql, returning, constant_values = _inserts[alias]
    # What BinaryField and DateTimeField would give the database, directly.
    params = [
        receiver,
        model_label,
        object_pk,
        cast("Any", connection).Database.Binary(payload),
        connection.ops.adapt_datetimefield_value(timezone.now()),
        *constant_values,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            return int(cursor.fetchone()[0])
        return int(cursor.lastrowid)


def _insert_statement(connection: Any) -> tuple[str, bool, list[Any]]:
    """The INSERT of an outbox row on ``connection``, whether it returns the
    pk, and the values of its constant columns, ready for the database."""
    from django_q_signals.models import OutboxCall

    constants = {
        "state": OutboxCall.State.QUEUED.value,
        "attempts": 0,
        "error": "",
        "claim": "",
        "progress_note": "",
    }
    names = ["receiver", "model", "object_pk", "payload", "created", *constants]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(OutboxCall._meta.db_table)} "
        f"({', '.join(quote(_column(OutboxCall, name)) for name in names)}) "
        f"VALUES ({', '.join(['%s'] * len(names))})"
    )
    # PostgreSQL's cursors give no lastrowid; SQLite's and MySQL's do.
    returning = connection.vendor == "postgresql"
    if returning:
        sql += f" RETURNING {quote(_column(OutboxCall, 'id'))}"
    prepared = [
        _field(OutboxCall, name).get_db_prep_save(value, connection)
        for name, value in constants.items()
    ]
    return sql, returning, prepared


def _field(model: type[Model], name: str) -> Field[Any, Any]:
    return cast("Field[Any, Any]", model._meta.get_field(name))


def _column(model: type[Model], name: str) -> str:
    return str(_field(model, name).column)


def delete_rows(alias: str, ids: list[int], claim: str | None = None) -> None:
    """Delete rows by pk (those a run claimed, with its ``claim``): plain
    DELETEs of at most PKS_AT_MOST pks, without the collector and the model signals
    that QuerySet.delete() would run for rows that have no relations."""
    connection = connections[alias]
    table, column = table_names(connection)
    claimed = "" if claim is None else f" AND {column('claim')} = %s"
    with connection.cursor() as cursor:
        for chunk in chunks(ids):
            cursor.execute(
                f"DELETE FROM {table} WHERE {column('id')} IN ({marks(chunk)})"
                + claimed,
                [*chunk, *([] if claim is None else [claim])],
            )


def table_names(connection: Any) -> tuple[str, Callable[[str], str]]:
    """The outbox table's name and a column's, quoted for ``connection``."""
    from django_q_signals.models import OutboxCall

    quote = connection.ops.quote_name
    return quote(OutboxCall._meta.db_table), lambda name: quote(
        _column(OutboxCall, name)
    )


#: The most pks one statement names: within every database's limit on
#: query parameters.
PKS_AT_MOST = 500


def chunks(ids: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(ids), PKS_AT_MOST):
        yield ids[start : start + PKS_AT_MOST]


def marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def keep_one_row(earlier: Call, later: Call) -> None:
    """``later`` took ``earlier``'s place: one row for both, with the call as
    it now stands."""
    from django_q_signals.models import OutboxCall

    if earlier.outbox_id is not None:
        delete_rows(earlier.alias, [earlier.outbox_id])
    if later.outbox_id is not None:
        rows = OutboxCall.objects.using(later.alias).filter(pk=later.outbox_id)
        rows.update(payload=pack(later))


_tables: set[tuple[str, str]] = set()
_missing_told: set[str] = set()


def pack(call: Call) -> bytes:
    """A call as its outbox row keeps it: signed, then pickled."""
    return signed(pickle.dumps(call.payload(), pickle.HIGHEST_PROTOCOL))


def unpack(payload: bytes) -> tuple[str, str, tuple[Any, ...]]:
    """The receiver name, database alias and call an outbox row keeps;
    ValueError if its signature does not verify or it holds no call of this
    version. Nothing is unpickled before the signature verifies."""
    if not is_signed(payload):
        raise ValueError(
            "its signature does not verify: it was not written by this project "
            "(or with a SECRET_KEY that is neither SECRET_KEY nor in "
            "SECRET_KEY_FALLBACKS)"
        )
    try:
        stored = read(pickle.loads(payload[_MAC_SIZE:]))
    except Exception as exc:
        raise ValueError(f"not a call of this version: {exc}") from exc
    return stored.receiver_name, stored.alias, stored.body


#: An outbox row's payload starts with an HMAC-SHA256 of the pickled call,
#: keyed with SECRET_KEY, as Django Q2 signs its tasks: a row written by
#: anyone else is refused before it is unpickled.
_MAC_SIZE = hashlib.sha256().digest_size
_SALT = b"django_q_signals.outbox"


def signed(data: bytes) -> bytes:
    """``data`` with its signature in front."""
    return _mac(data, settings.SECRET_KEY) + data


def is_signed(payload: bytes) -> bool:
    """Whether ``payload`` was signed with SECRET_KEY or one of its fallbacks."""
    mac, data = payload[:_MAC_SIZE], payload[_MAC_SIZE:]
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(hmac.compare_digest(mac, _mac(data, secret)) for secret in secrets)


def _mac(data: bytes, secret: str | bytes) -> bytes:
    return hmac.new(_key(secret), data, hashlib.sha256).digest()


@functools.lru_cache(maxsize=8)
def _key(secret: str | bytes) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(_SALT + raw).digest()


def has_table(alias: str) -> bool:
    """Whether the database has the outbox table (once it has, it is not
    asked again)."""
    from django_q_signals.models import OutboxCall

    table = OutboxCall._meta.db_table
    if (alias, table) in _tables:
        return True
    if table in connections[alias].introspection.table_names():
        _tables.add((alias, table))
        return True
    return False


def _has_table_or_say_so(alias: str) -> bool:
    if has_table(alias):
        return True
    if alias not in _missing_told:
        _missing_told.add(alias)
        logger.error(
            "The outbox table is missing on the database %r: calls of outbox "
            "receivers are queued there without it, and lost if the process "
            "stops before queuing them. Add 'django_q_signals' to "
            "INSTALLED_APPS and run: manage.py migrate django_q_signals "
            "--database %s",
            alias,
            alias,
        )
    return False


def mark_sent(calls: list[Call], *, resent: bool = False) -> None:
    """Record that ``calls`` are on the broker.

    A state only moves forward: a call sent after its commit is marked
    ``sent`` only while it is still ``queued``, so a worker that already ran
    or failed it keeps what it recorded. The relay (``resent``), which holds
    the rows it sends locked, marks any of them that no live claim holds.
    """
    ids_by_alias = _ids_by_alias(calls)
    if not ids_by_alias:
        return  # No outbox rows: the app may not even be installed.
    from django_q_signals.models import OutboxCall

    now = timezone.now()
    for alias, ids in ids_by_alias.items():
        for chunk in chunks(ids):
            rows = OutboxCall.objects.using(alias).filter(pk__in=chunk)
            if resent:
                rows.mark_resent(now)
            else:
                rows.mark_sent(now)


def _ids_by_alias(calls: Iterable[Call]) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = defaultdict(list)
    for call in calls:
        if call.outbox_id is not None:
            ids[call.alias].append(call.outbox_id)
    return ids


def refs(calls: list[Call]) -> tuple[Ref | None, ...] | None:
    """What a task tells the worker of its calls' rows, if any has one."""
    if all(call.outbox_id is None for call in calls):
        return None
    return tuple(
        None if call.outbox_id is None else (call.alias, call.outbox_id)
        for call in calls
    )


def by_alias(refs: Iterable[Ref | None]) -> Iterable[tuple[str, list[int]]]:
    """Row pks by database alias."""
    ids: dict[str, list[int]] = defaultdict(list)
    for alias, pk in filter(None, refs):
        ids[alias].append(pk)
    return ids.items()


def pending(
    instance: Model, handler: Callable[..., Any] | str | None = None
) -> OutboxCallQuerySet:
    """The outbox calls still to run for ``instance``'s row, in any state.

    ``handler`` narrows them to one handler: the decorated function, or its
    dotted path (every receiver of that function), or one receiver's name
    (``"module.func#dispatch_uid"``). Returns a QuerySet of ``OutboxCall``.
    """
    from django_q_signals.models import OutboxCall

    model = type(instance)
    alias = instance._state.db or router.db_for_write(model)
    concrete = model._meta.concrete_model or model
    calls = OutboxCall.objects.using(alias).filter(
        model=concrete._meta.label,
        object_pk=canonical_pk(saved_pk(instance)),
    )
    return calls if handler is None else calls.of_handler(handler)
