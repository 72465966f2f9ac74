"""The record of each async receiver, and the registry workers find them in.

A worker process gets a receiver's name from the task and looks the record up
here; it imports the handler's module first if no record has that name yet.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db.models.base import ModelBase
from django.db.models.signals import m2m_changed
from django.dispatch import Signal

from django_q_signals import _conf

if TYPE_CHECKING:
    from django.db.models import Model

logger = logging.getLogger("django_q_signals")

# Django Q2 stores task names and groups in 100-character columns.
_NAME_LENGTH = 100

#: The fields of a Receiver that say what it is; every other public field is
#: an option of ``async_receiver()``.
IDENTITY_FIELDS = frozenset({"func", "name", "signals", "sender", "dispatch_uid"})

#: Each option, and the ``Q_SIGNALS`` key its value comes from when the
#: receiver leaves it to the settings (None: the option has a fixed default).
#: Every option is here: ``Receiver.describe_options()`` refuses one that is not.
OPTION_SETTINGS: dict[str, str | None] = {
    "on_commit": "ON_COMMIT",
    "batch": "BATCH_SIZE",  # the size of batch=True
    "snapshot": None,
    "q_options": "Q_OPTIONS",
    "select_related": None,
    "prefetch_related": None,
    "outbox": "OUTBOX",
    "coalesce": None,
    "retries": None,
    "retry_backoff": None,
    "when": None,
    "previous": None,
    "ordered": "ORDERED",
    "supersede": "SUPERSEDE",
}


@dataclass(eq=False)
class Receiver:
    """A decorated handler and the options it was decorated with."""

    func: Callable[..., Any]
    #: The name a worker finds it by: the handler's dotted path, plus the
    #: dispatch_uid or a number when that alone would not tell it apart.
    name: str
    signals: tuple[Signal, ...]
    sender: Any
    #: What the receiver is connected to its signals under.
    dispatch_uid: Any
    on_commit: bool | None = None
    batch: bool | int = False
    snapshot: bool = False
    q_options: dict[str, Any] = field(default_factory=dict)
    select_related: tuple[str, ...] = ()
    prefetch_related: tuple[str, ...] = ()
    outbox: bool | None = None
    coalesce: bool = False
    retries: int = 0
    retry_backoff: float | None = None
    #: Called in the request: a false result queues nothing.
    when: Callable[..., Any] | None = None
    #: Fields whose values before the save the handler gets as ``previous``.
    previous: tuple[str, ...] = ()
    #: One call per row at a time, in the order written (outbox receivers).
    ordered: bool | None = None
    #: A new call drops the row's calls not started yet (outbox receivers).
    supersede: bool | None = None
    _warned: set[str] = field(default_factory=set, init=False)

    @property
    def module(self) -> str:
        return self.func.__module__

    @property
    def is_nested(self) -> bool:
        """Defined inside a function: a worker only knows it if it runs that code."""
        return "<locals>" in self.func.__qualname__

    @cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    @property
    def is_batched(self) -> bool:
        return self.batch is not False

    @property
    def task_name(self) -> str:
        # The tail of a long name is the part that tells handlers apart.
        return self.name[-_NAME_LENGTH:]

    def option(self, name: str, config: _conf.Config | None = None) -> Any:
        """An option's value in use: the receiver's own, or else (None) its
        ``Q_SIGNALS`` setting's, as OPTION_SETTINGS pairs them."""
        value = getattr(self, name)
        setting = OPTION_SETTINGS[name]
        if value is not None or setting is None:
            return value
        return _conf.value_of(setting, config)

    @property
    def waits_for_commit(self) -> bool:
        """Queue at commit: ``on_commit``, or else the ``ON_COMMIT`` setting."""
        return bool(self.option("on_commit"))

    @property
    def uses_outbox(self) -> bool:
        """Keep calls in the outbox: ``outbox``, or else the ``OUTBOX`` setting."""
        return bool(self.option("outbox"))

    @property
    def keeps_order(self) -> bool:
        """Run a row's calls one at a time, in order: ``ordered``, or else
        the ``ORDERED`` setting, for a receiver that uses the outbox."""
        return self.uses_outbox and bool(self.option("ordered"))

    @property
    def supersedes(self) -> bool:
        """A new call drops the row's calls not started yet: ``supersede``,
        or else the ``SUPERSEDE`` setting, for a receiver that uses the outbox."""
        return self.uses_outbox and bool(self.option("supersede"))

    @property
    def batch_size(self) -> int:
        """At most this many calls per task, for a batched receiver."""
        return _conf.get().batch_size if self.batch is True else int(self.batch)

    def describe_options(self) -> list[str]:
        """Its options as ``name=value``, in the order they are declared: each
        one it sets, or that is on, or that a ``Q_SIGNALS`` key gives it, and
        where a value it left to the settings comes from. ``q_options`` are
        left out: ``task_options()`` shows them merged with the settings'."""
        described = []
        for option in fields(self):
            name = option.name
            if name in IDENTITY_FIELDS or name.startswith("_") or name == "q_options":
                continue
            setting = OPTION_SETTINGS[name]
            value = getattr(self, name)
            if name == "batch" and value is True:
                origin = _conf.origin("BATCH_SIZE")
                described.append(
                    f"batch=True ({self.batch_size} calls per task, {origin})"
                )
            elif value is None and setting is not None:
                used, origin = _conf.value_of(setting), _conf.origin(setting)
                if used or origin != "default":
                    described.append(f"{name}={used!r} ({origin})")
            elif value != option.default:
                described.append(f"{name}={_shown(value)}")
        return described

    def task_options(self, config: _conf.Config | None = None) -> dict[str, Any]:
        """The options for Django Q2: the receiver's, over the settings', over
        the default name and group."""
        config = config or _conf.get()
        options = {
            "task_name": self.task_name,
            "group": self.task_name,
            **config.q_options,
            **self.q_options,
        }
        if options.get("timeout", 0) is None:
            del options["timeout"]  # The cluster's own timeout.
        if self.is_batched or self.option("outbox", config):
            # A batch is never run again as a whole because some of its
            # calls failed: the others would run twice. An outbox call is
            # retried by the relay, as its retries say.
            options["ack_failure"] = True
        return options

    @cached_property
    def sender_model(self) -> type[Model] | None:
        """The model the receiver was connected for, if its sender names one."""
        if isinstance(self.sender, ModelBase):
            return cast("type[Model]", self.sender)
        if isinstance(self.sender, str) and "." in self.sender:
            try:
                return apps.get_model(self.sender)
            except (LookupError, ValueError):
                return None
        return None

    @cached_property
    def sender_label(self) -> str:
        """The label of the receiver's sender model."""
        assert self.sender_model is not None
        return sys.intern(self.sender_model._meta.label)

    @cached_property
    def related_model(self) -> type[Model] | None:
        """The model ``select_related`` and ``prefetch_related`` were written
        for: the sender, or for an ``m2m_changed`` receiver, whose sender is a
        through model, the model that declares the field. None if the sender
        names no model."""
        if not (self.select_related or self.prefetch_related):
            return None
        try:
            model = (
                apps.get_model(self.sender)
                if isinstance(self.sender, str)
                else self.sender
            )
        except (LookupError, ValueError):
            return None  # Django's own check reports the lazy reference.
        if m2m_changed not in self.signals:
            return cast("type[Model]", model)
        declaring = model._meta.auto_created
        if declaring:
            return cast("type[Model]", declaring)
        for candidate in apps.get_models():
            for m2m in candidate._meta.local_many_to_many:
                if m2m.remote_field.through is model:
                    return candidate
        return cast("type[Model]", model)

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


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if callable(value):
        module = getattr(value, "__module__", None)
        name = getattr(value, "__qualname__", None)
        return f"{module}.{name}" if module and name else repr(value)
    return repr(value)


_registry: dict[str, Receiver] = {}


def register(receiver: Receiver) -> None:
    _registry[receiver.name] = receiver


def get_receiver(name: str) -> Receiver | None:
    """Find a receiver by name, importing the module that defines it if needed.

    The module is the longest leading part of the name's dotted path that can
    be imported (``shop.signals`` for ``shop.signals.reindex``).
    """
    receiver = _registry.get(name)
    if receiver is None:
        if _module_of(name) is None:
            logger.error("No module of %s could be imported", name)
            return None
        receiver = _registry.get(name)
    return receiver


def _module_of(receiver_name: str) -> ModuleType | None:
    parts = receiver_name.partition("#")[0].split(".")
    for length in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:length])
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if name == missing or name.startswith(missing + "."):
                continue  # Not a module: a shorter path may be.
            logger.exception(
                "Could not import %s to find receiver %s", name, receiver_name
            )
            return None
        except ImportError:
            logger.exception(
                "Could not import %s to find receiver %s", name, receiver_name
            )
            return None
    return None


def all_receivers() -> list[Receiver]:
    return list(_registry.values())


def claim_name(func: Callable[..., Any], dispatch_uid: Any) -> str:
    """Choose the name a worker will look this handler up by."""
    name = f"{func.__module__}.{func.__qualname__}"
    if dispatch_uid is not None:
        name = f"{name}#{dispatch_uid}"
    existing = _registry.get(name)
    if existing is not None and existing.func is func:
        # The same function decorated again (stacked decorators): number the
        # later ones in decoration order, which is the same in every process.
        number = 2
        while f"{name}#{number}" in _registry:
            number += 1
        return f"{name}#{number}"
    if existing is not None and existing.is_connected():
        raise ImproperlyConfigured(
            f"Another handler is already an async receiver under the name {name!r}, "
            "and a worker could not tell the two apart. Give one of them a "
            "different name, or pass a distinct dispatch_uid to each."
        )
    return name
