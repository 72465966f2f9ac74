"""``previous=``: the values some fields had in the database before a save.

For each model some receiver asks this of, three hooks run, connected before
the receivers themselves so that they run first:

- ``post_init`` keeps the values of the wanted fields an instance was made
  with. They are trusted only once Django marks the instance as loaded from
  the database (``_state.adding`` is False), as ``Model.from_db`` does right
  after ``__init__``.
- ``pre_save`` works out, once per save and for every receiver of the model,
  the values before the save: None on a create, the kept values where they
  can be trusted, and else one query for the fields that are missing.
- ``post_save`` keeps the values the save wrote, so that the next save of the
  same instance compares against them.

Values kept after a save in a transaction are trusted only while that
transaction, and every savepoint since, stands: Django gives the connection
a new ``run_on_commit`` list at each commit, rollback and savepoint rollback,
and the kept values hold the list they were written under. A copy of an
instance made by pickling (a cache) or ``copy.deepcopy`` trusts nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from django.core.exceptions import FieldDoesNotExist
from django.db import connections, router
from django.db.models.signals import post_init, post_save, pre_save

from django_q_signals._payload import is_plain

if TYPE_CHECKING:
    from django.db.models import Field, Model

    from django_q_signals._registry import Receiver

# Keys of the instance's __dict__, next to its fields' values.
_KEPT = "_qsignals_kept"  # a _Kept
_BEFORE = "_qsignals_previous"  # {attname: value} before the save under way

#: The receivers with ``previous``, by the sender they were connected for.
_watchers: dict[Any, list[Receiver]] = {}
#: The attnames wanted of each model, worked out at its first signal.
_attnames: dict[type[Model], tuple[str, ...]] = {}
#: Each receiver's field names and the attnames they are read from.
_wanted: dict[Receiver, tuple[tuple[str, str], ...]] = {}


def watch(receiver: Receiver) -> None:
    """Keep what ``receiver`` needs; call before connecting it."""
    sender = receiver.sender
    _watchers.setdefault(sender, []).append(receiver)
    _attnames.clear()
    uid = "django_q_signals._previous"
    post_init.connect(_keep, sender=sender, weak=False, dispatch_uid=uid)
    pre_save.connect(_capture, sender=sender, weak=False, dispatch_uid=uid)
    post_save.connect(_remember, sender=sender, weak=False, dispatch_uid=uid)


def problem(model: type[Model], names: Sequence[str]) -> str | None:
    """Why ``previous=names`` cannot be read on ``model``, if it cannot."""
    for name in names:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            field = None
        if field is None or not field.concrete or field.many_to_many:
            known = ", ".join(f.name for f in model._meta.concrete_fields)
            return (
                f"previous={list(names)!r}: {model._meta.label} has no field "
                f"{name!r} stored in its table (its fields: {known})."
            )
    return None


def values_for(
    receiver: Receiver, instance: Model, using: str | None
) -> dict[str, Any]:
    """``previous`` for ``receiver``: its fields' values before this save."""
    before = instance.__dict__.get(_BEFORE)
    if before is None:
        # A signal sent by hand, not by a save: what the database holds.
        _capture(type(instance), instance, using=using)
        before = instance.__dict__[_BEFORE]
    wanted = _wanted.get(receiver)
    if wanted is None:
        model = type(instance)
        wanted = _wanted[receiver] = tuple(
            (name, _attname(model, name)) for name in receiver.previous
        )
    return {name: before[attname] for name, attname in wanted}


def _attnames_of(model: type[Model]) -> tuple[str, ...]:
    found = _attnames.get(model)
    if found is None:
        names: dict[str, None] = {}
        for sender, receivers in _watchers.items():
            if sender is model or (
                isinstance(sender, str) and sender.lower() == model._meta.label_lower
            ):
                for receiver in receivers:
                    if problem(model, receiver.previous):
                        continue  # An error of manage.py check (E008).
                    for name in receiver.previous:
                        names[_attname(model, name)] = None
        found = _attnames[model] = tuple(names)
    return found


def _attname(model: type[Model], name: str) -> str:
    """Where the value of field ``name`` is kept (a foreign key's id)."""
    field = cast("Field[Any, Any]", model._meta.get_field(name))
    return field.attname


def _frozen(value: Any) -> Any:
    """A value as it is now, safe from changes made in place later (a
    JSONField's dict)."""
    return value if is_plain(value) else copy.deepcopy(value)


class _Kept:
    """The wanted fields' values as an instance last read or wrote them, and
    the transaction they were written in (None: they are durable). Never
    changed once made, as ``copy.copy`` of an instance shares it."""

    __slots__ = ("hooks", "values")

    def __init__(self, values: dict[str, Any], hooks: list[Any] | None = None) -> None:
        self.values = values
        self.hooks = hooks

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickled or deep-copied instance may be read back much later, and
        # would carry the commit callbacks: it is looked up again.
        return (_Kept, ({}, None))

    def trusted(self, using: str) -> dict[str, Any]:
        hooks = self.hooks
        if hooks is None or connections[using].run_on_commit is hooks:
            return self.values
        return {}  # Committed or rolled back since: which, it cannot tell.


def _keep(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    values = instance.__dict__
    values[_KEPT] = _Kept(
        {
            attname: _frozen(values[attname])
            for attname in _attnames_of(sender)
            if attname in values  # not a deferred field
        }
    )


def _hooks(using: str) -> list[Any] | None:
    """What makes values written now durable or not: None outside a
    transaction, else the transaction's list of commit callbacks."""
    connection = connections[using]
    if connection.in_atomic_block or not connection.get_autocommit():
        hooks: list[Any] = connection.run_on_commit
        return hooks
    return None


def _trusted(instance: Model, using: str) -> dict[str, Any]:
    """The kept values that are still those of the database."""
    state = instance._state
    kept: _Kept | None = instance.__dict__.get(_KEPT)
    if kept is None or state.adding or state.db != using:
        return {}
    return kept.trusted(using)


def _database_of(instance: Model) -> str:
    return instance._state.db or router.db_for_write(type(instance), instance=instance)


def _is_a_create(instance: Model, raw: bool) -> bool:
    """Whether Django will insert the row without looking for it."""
    if not instance._state.adding:
        return False
    if instance.pk is None:
        return True
    # Django inserts at once an instance whose pk has a default.
    pk = instance._meta.pk
    return not raw and pk is not None and pk.has_default()


def _capture(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    raw = kwargs.get("raw", False)
    using = kwargs.get("using") or _database_of(instance)
    attnames = _attnames_of(sender)
    if _is_a_create(instance, raw):
        instance.__dict__[_BEFORE] = dict.fromkeys(attnames)
        return
    kept = _trusted(instance, using)
    before = {attname: kept[attname] for attname in attnames if attname in kept}
    missing = [attname for attname in attnames if attname not in before]
    if missing:
        row = _stored(sender, using, instance.pk, tuple(missing))
        before.update(dict.fromkeys(missing) if row is None else row)
    instance.__dict__[_BEFORE] = before


#: The look-up of some fields of a row by pk, compiled once per model,
#: database and fields: its SQL, and the columns its values are converted
#: for; None where the ORM builds it each time (a composite pk).
_lookups: dict[tuple[type[Model], str, tuple[str, ...]], Any] = {}


def _stored(
    model: type[Model], using: str, pk: Any, attnames: tuple[str, ...]
) -> dict[str, Any] | None:
    """The values of ``attnames`` in the row ``pk`` of ``using``; None if it
    has no such row."""
    key = (model, using, attnames)
    if key not in _lookups:
        _lookups[key] = _compiled(model, using, pk, attnames)
    compiled = _lookups[key]
    if compiled is None:
        rows = model._base_manager.db_manager(using).filter(pk=pk)
        return next(iter(rows.values(*attnames)), None)
    # Building the QuerySet costs ten times the query on a fast database.
    sql, columns = compiled
    connection = connections[using]
    param = _pk_param(model, pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [param])
        row = cursor.fetchone()
    if row is None:
        return None
    values = {}
    for attname, value, column in zip(attnames, row, columns, strict=True):
        for convert in [
            *connection.ops.get_db_converters(column),
            *column.get_db_converters(connection),
        ]:
            value = convert(value, column, connection)
        values[attname] = value
    return values


def _compiled(
    model: type[Model], using: str, pk: Any, attnames: tuple[str, ...]
) -> tuple[str, list[Any]] | None:
    rows = model._base_manager.db_manager(using).filter(pk=pk).values(*attnames)
    query = rows.query
    compiler = query.get_compiler(using)
    sql, params = compiler.as_sql()
    connection = connections[using]
    if (
        query.extra_select
        or query.annotation_select
        or len(params) != 1
        or params[0] != _pk_param(model, pk, connection)
    ):
        return None  # Not one parameter that is the pk as the lookup takes it.
    return sql, [column for column, _, _ in compiler.select]


def _pk_param(model: type[Model], pk: Any, connection: Any) -> Any:
    return model._meta.pk.get_db_prep_value(pk, connection, prepared=False)


def _remember(sender: type[Model], instance: Model, **kwargs: Any) -> None:
    using = kwargs.get("using")
    before = instance.__dict__.get(_BEFORE)
    if using is None or before is None:
        return  # Sent by hand, not by a save: nothing was written.
    saved = _attnames_of(sender)
    update_fields = kwargs.get("update_fields")
    if update_fields is not None:
        written = {_attname(sender, name) for name in update_fields}
        saved = tuple(attname for attname in saved if attname in written)
    values = instance.__dict__
    after = {**before, **{a: _frozen(values[a]) for a in saved if a in values}}
    values[_KEPT] = _Kept(after, _hooks(using))
