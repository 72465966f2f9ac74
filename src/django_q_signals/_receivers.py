"""The ``@async_receiver`` decorator and the registry workers find handlers in."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.core.exceptions import ImproperlyConfigured
from django.db.models.base import ModelBase
from django.db.models.query import QuerySet
from django.dispatch import Signal
from django.utils.inspect import func_accepts_kwargs

from django_q_signals import _conf, _payload, _queue

if TYPE_CHECKING:
    from django.db.models import Model

logger = logging.getLogger("django_q_signals")

Handler = TypeVar("Handler", bound=Callable[..., Any])

# Django Q2 stores task names and groups in 100-character columns.
_NAME_LENGTH = 100

_registry: dict[str, Receiver] = {}


class Receiver:
    """A decorated handler: how its signals are queued and how a worker runs it."""

    def __init__(
        self,
        func: Callable[..., Any],
        key: str,
        signals: tuple[Signal, ...],
        sender: Any,
        *,
        dispatch_uid: Any,
        on_commit: bool | None,
        batch: bool | int,
        snapshot: bool,
        q_options: Mapping[str, Any],
        select_related: tuple[str, ...],
        prefetch_related: tuple[str, ...],
    ) -> None:
        self.func = func
        self.key = key
        self.path = f"{func.__module__}.{func.__qualname__}"
        self.module = func.__module__
        self.signals = signals
        self.sender = sender
        self.dispatch_uid = dispatch_uid
        self.on_commit = on_commit
        self.batch = batch
        self.snapshot = snapshot
        self.select_related = select_related
        self.prefetch_related = prefetch_related
        self.is_async = inspect.iscoroutinefunction(func)
        # The tail of a long path is the part that tells handlers apart.
        self.task_name = key[-_NAME_LENGTH:]
        self.q_options = dict(q_options)
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"<Receiver {self.key}>"

    @property
    def is_nested(self) -> bool:
        """Defined inside a function: a worker only knows it if it runs that code."""
        return "<locals>" in self.func.__qualname__

    @property
    def waits_for_commit(self) -> bool:
        """Queue at commit: ``on_commit``, or else the ``ON_COMMIT`` setting."""
        return _conf.get().on_commit if self.on_commit is None else self.on_commit

    @property
    def batch_size(self) -> int:
        """At most this many calls per task, for a batched receiver."""
        return _conf.get().batch_size if self.batch is True else int(self.batch)

    def task_options(self) -> dict[str, Any]:
        """The options for Django Q2: the receiver's, over the settings', over
        the default name and group."""
        return {
            "task_name": self.task_name,
            "group": self.task_name,
            **_conf.get().q_options,
            **self.q_options,
        }

    def is_connected(self) -> bool:
        return any(
            lookup_key[0] == self.dispatch_uid
            for signal in self.signals
            for lookup_key, *_ in signal.receivers
        )

    def warn_once(self, name: str, message: str, *args: Any) -> None:
        """Log a WARNING about kwarg ``name`` the first time it happens."""
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(message, *args)

    def reload_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.select_related:
            queryset = queryset.select_related(*self.select_related)
        if self.prefetch_related:
            queryset = queryset.prefetch_related(*self.prefetch_related)
        return queryset

    def on_signal(self, signal: Signal, sender: Any, **kwargs: Any) -> None:
        """The receiver Django calls: record the call and queue it."""
        # Saving a Django Q2 task or result must never queue another task.
        if (
            isinstance(sender, ModelBase)
            and cast("type[Model]", sender)._meta.app_label == "django_q"
        ):
            return
        call = _payload.encode_call(self, signal, sender, kwargs)
        if call is not None:
            _queue.queue_call(call)


def async_receiver(
    signal: Signal | Sequence[Signal],
    sender: Any = None,
    *,
    weak: bool = True,
    dispatch_uid: Any = None,
    on_commit: bool | None = None,
    batch: bool | int = False,
    snapshot: bool = False,
    q_options: Mapping[str, Any] | None = None,
    select_related: Sequence[str] | None = None,
    prefetch_related: Sequence[str] | None = None,
) -> Callable[[Handler], Handler]:
    """Connect a handler to ``signal`` and run it in a Django Q2 worker.

    Used like ``django.dispatch.receiver``. When the signal fires, the call
    is recorded and queued on Django Q2, by default once the transaction on
    the signal's database commits (``on_commit=None`` takes the
    ``Q_SIGNALS["ON_COMMIT"]`` setting, True unless set); with ``batch``,
    the calls of one commit share tasks of at most ``batch`` calls (``True``:
    the ``BATCH_SIZE`` setting). The decorated function is returned
    unchanged. ``weak`` is accepted for symmetry with ``receiver``: the
    connection is always kept alive.
    """
    signals = _check_signals(signal)
    _check_sender(sender)
    _check_on_commit(on_commit)
    _check_batch(batch)
    options = _check_q_options(q_options)
    related = _check_lookups("select_related", select_related)
    prefetched = _check_lookups("prefetch_related", prefetch_related)

    def decorator(func: Handler) -> Handler:
        _check_handler(func)
        # Without a dispatch_uid, Django would key the connection on the
        # wrapper; keying it on the handler keeps signal.disconnect(handler)
        # working as it does for @receiver.
        uid = id(func) if dispatch_uid is None else dispatch_uid
        record = Receiver(
            func,
            _claim_key(func, dispatch_uid),
            signals,
            sender,
            dispatch_uid=uid,
            on_commit=on_commit,
            batch=batch,
            snapshot=snapshot,
            q_options=options,
            select_related=related,
            prefetch_related=prefetched,
        )
        _registry[record.key] = record
        for each in signals:
            each.connect(record.on_signal, sender=sender, weak=False, dispatch_uid=uid)
        return func

    return decorator


def get_receiver(key: str, module: str) -> Receiver | None:
    """Find a receiver by key, importing the module that defines it if needed."""
    record = _registry.get(key)
    if record is None:
        try:
            importlib.import_module(module)
        except ImportError:
            logger.exception("Could not import %s to find receiver %s", module, key)
            return None
        record = _registry.get(key)
    return record


def all_receivers() -> list[Receiver]:
    return list(_registry.values())


def _claim_key(func: Callable[..., Any], dispatch_uid: Any) -> str:
    """Choose the key a worker will look this handler up by."""
    key = f"{func.__module__}.{func.__qualname__}"
    if dispatch_uid is not None:
        key = f"{key}#{dispatch_uid}"
    existing = _registry.get(key)
    if existing is not None and existing.func is func:
        # The same function decorated again (stacked decorators): number the
        # later ones in decoration order, which is the same in every process.
        number = 2
        while f"{key}#{number}" in _registry:
            number += 1
        return f"{key}#{number}"
    if existing is not None and existing.is_connected():
        raise ImproperlyConfigured(
            f"Another handler is already an async receiver under the name {key!r}, "
            "and a worker could not tell the two apart. Give one of them a "
            "different name, or pass a distinct dispatch_uid to each."
        )
    return key


def _check_signals(signal: Signal | Sequence[Signal]) -> tuple[Signal, ...]:
    signals = tuple(signal) if isinstance(signal, (list, tuple)) else (signal,)
    if not signals or not all(isinstance(each, Signal) for each in signals):
        raise TypeError(
            "async_receiver() takes a Signal or a list or tuple of Signals, "
            f"not {signal!r}."
        )
    return signals


def _check_sender(sender: Any) -> None:
    if isinstance(sender, ModelBase):
        app_label = cast("type[Model]", sender)._meta.app_label
    elif isinstance(sender, str) and "." in sender:
        app_label = sender.split(".", 1)[0]
    else:
        return
    if app_label == "django_q":
        raise ImproperlyConfigured(
            f"{sender!r} is a Django Q2 model: an async receiver for it would "
            "queue a task for every task Django Q2 saves, forever."
        )


def _check_on_commit(on_commit: bool | None) -> None:
    if not (on_commit is None or isinstance(on_commit, bool)):
        raise TypeError(f"on_commit must be True, False or None, not {on_commit!r}.")


def _check_batch(batch: bool | int) -> None:
    if not (isinstance(batch, bool) or _conf.is_positive_int(batch)):
        raise TypeError(
            f"batch must be True, False or a whole number of 1 or more, not {batch!r}."
        )


def _check_q_options(q_options: Mapping[str, Any] | None) -> dict[str, Any]:
    if q_options is None:
        return {}
    if not isinstance(q_options, Mapping):
        raise TypeError(f"q_options must be a dict, not {q_options!r}.")
    problem = _conf.q_options_problem(dict(q_options), "q_options")
    if problem:
        raise TypeError(problem)
    return dict(q_options)


def _check_lookups(name: str, lookups: Iterable[str] | None) -> tuple[str, ...]:
    if lookups is None:
        return ()
    if isinstance(lookups, str) or not all(isinstance(x, str) for x in lookups):
        raise TypeError(f"{name} must be a list of lookup names, not {lookups!r}.")
    return tuple(lookups)


def _check_handler(func: Any) -> None:
    if isinstance(func, functools.partial):
        raise TypeError(
            "async_receiver() cannot decorate a functools.partial: a worker finds "
            "handlers by module and name, and a partial has neither. Decorate a "
            "function defined with def."
        )
    if inspect.ismethod(func):
        raise TypeError(
            f"async_receiver() cannot decorate the bound method {func!r}: a worker "
            "cannot recreate the object it is bound to. Decorate a module-level "
            "function and look the object up inside it."
        )
    if not inspect.isfunction(func):
        raise TypeError(
            f"async_receiver() can only decorate functions defined with def, "
            f"not {func!r}: a worker finds handlers by module and name."
        )
    if func.__name__ == "<lambda>":
        raise TypeError(
            "async_receiver() cannot decorate a lambda: a worker finds handlers "
            "by module and name, and a lambda has no name. Use def instead."
        )
    if not func_accepts_kwargs(func):
        raise TypeError(
            f"{func.__qualname__}() must accept keyword arguments (**kwargs), as "
            "every signal receiver must."
        )
