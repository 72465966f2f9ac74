"""``@async_receiver``: check the options, register the handler, connect it."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db.models import signals as model_signals
from django.db.models.base import ModelBase
from django.db.models.signals import post_save, pre_save
from django.dispatch import Signal
from django.utils.inspect import func_accepts_kwargs

from django_q_signals import (
    _commit,
    _compat,
    _conf,
    _outbox,
    _payload,
    _previous,
    _registry,
)
from django_q_signals.checks import check_outbox_installed

if TYPE_CHECKING:
    from django.db.models import Model
    from typing_extensions import Never

Handler = TypeVar("Handler", bound=Callable[..., Any])

# Registered here rather than by the app's ready(): it reports the app missing.
checks.register(check_outbox_installed)


def async_receiver(
    signal: Signal | Sequence[Signal],
    sender: Any = None,
    *,
    weak: bool = True,
    dispatch_uid: Any = None,
    on_commit: bool | None = None,
    batch: bool | int = False,
    coalesce: bool = False,
    snapshot: bool = False,
    q_options: Mapping[str, Any] | None = None,
    select_related: Sequence[str] | None = None,
    prefetch_related: Sequence[str] | None = None,
    outbox: bool | None = None,
    retries: int = 0,
    retry_backoff: float | None = None,
    when: Callable[..., Any] | None = None,
    previous: Sequence[str] | None = None,
    ordered: bool | None = None,
    supersede: bool | None = None,
    # Taken only to be refused with a "did you mean"; typed Never, so that a
    # type checker still flags a misspelt option.
    **unknown: Never,
) -> Callable[[Handler], Handler]:
    """Connect a handler to ``signal`` and run it in a Django Q2 worker.

    Used like ``django.dispatch.receiver``. When the signal fires, the call
    is recorded and queued on Django Q2, by default once the transaction on
    the signal's database commits (``on_commit=None`` takes the
    ``Q_SIGNALS["ON_COMMIT"]`` setting, True unless set); with ``batch``,
    the calls of one commit share tasks of at most ``batch`` calls (``True``:
    the ``BATCH_SIZE`` setting); with ``coalesce``, the calls of one commit
    for the same row become one, the last. With ``outbox`` (``None``: the ``OUTBOX``
    setting, False unless set), each call is also written to the outbox in
    the signal's transaction, so that none is lost between the commit and
    the broker and each runs once; ``retries`` and ``retry_backoff`` run a
    failed call again. ``when`` is called in the request with the
    handler's arguments: a false result queues nothing. ``previous`` names
    fields of a ``pre_save`` or ``post_save`` sender model whose values
    before the save the handler (and ``when``) get as ``previous``. With
    ``outbox=True``, ``ordered`` runs the calls for one row one at a time,
    in the order they were written, and ``supersede`` drops a row's calls
    not started yet when a newer one is written (``None``: the ``ORDERED``
    and ``SUPERSEDE`` settings, for receivers that use the outbox). The
    decorated function is returned unchanged.
    ``weak`` is accepted for symmetry with ``receiver``: the connection is
    always kept alive. An unknown option is refused, with the option it is
    likely a typo of.
    """
    _check_unknown(unknown)
    signals = _check_signals(signal)
    _check_sender(sender)
    _check_on_commit(on_commit)
    _check_batch(batch)
    _check_coalesce(coalesce, on_commit, snapshot)
    options = _check_q_options(q_options)
    related = _check_lookups("select_related", select_related)
    prefetched = _check_lookups("prefetch_related", prefetch_related)
    _check_outbox(outbox, on_commit, retries, retry_backoff)
    _check_row_options(outbox, ordered=ordered, supersede=supersede)
    _check_lookups_sender(related + prefetched, sender)
    _check_when(when)
    fields = _check_previous(previous, signals, sender)

    def decorator(func: Handler) -> Handler:
        _check_handler(func)
        receiver = _registry.Receiver(
            func,
            _registry.claim_name(func, dispatch_uid),
            signals,
            sender,
            # Without a dispatch_uid, Django would key the connection on the
            # function it is given; keying it on the handler keeps
            # signal.disconnect(handler) working as it does for @receiver.
            dispatch_uid=id(func) if dispatch_uid is None else dispatch_uid,
            on_commit=on_commit,
            batch=batch,
            coalesce=coalesce,
            snapshot=snapshot,
            q_options=options,
            select_related=related,
            prefetch_related=prefetched,
            outbox=outbox,
            retries=retries,
            retry_backoff=retry_backoff,
            when=when,
            previous=fields,
            ordered=ordered,
            supersede=supersede,
        )
        _check_previous_fields(receiver)
        _register_and_connect(receiver)
        return func

    return decorator


def _check_previous_fields(receiver: _registry.Receiver) -> None:
    """Refuse ``previous`` names that are not fields of the sender's model."""
    fields = receiver.previous
    model = receiver.sender_model if fields and apps.models_ready else None
    problem = model and _previous.problem(model, fields)
    if problem:
        # Before the models are ready, manage.py check says it (E008).
        raise ImproperlyConfigured(problem)


def _register_and_connect(receiver: _registry.Receiver) -> None:
    """Register ``receiver`` for the workers, write its 0.x task function,
    and connect it to its signals."""
    _registry.register(receiver)
    if receiver.previous:
        # Its hooks run before the receiver: connected first.
        _previous.watch(receiver)
    _compat.write_task_function(receiver)
    receive = _receive_for(receiver)
    for signal in receiver.signals:
        signal.connect(
            receive,
            sender=receiver.sender,
            weak=False,
            dispatch_uid=receiver.dispatch_uid,
        )


#: The options async_receiver() takes by name.
_OPTION_NAMES = tuple(
    name
    for name, parameter in inspect.signature(async_receiver).parameters.items()
    if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    and name != "signal"
)


def _check_unknown(unknown: dict[str, Any]) -> None:
    if unknown:
        named = ", ".join(_conf.with_guess(name, _OPTION_NAMES) for name in unknown)
        raise TypeError(
            f"Unknown async_receiver() option{'s' if len(unknown) > 1 else ''} "
            f"{named}; the options are {', '.join(_OPTION_NAMES)}."
        )


#: Apps whose models never trigger async receivers.
_OWN_APPS = ("django_q", "django_q_signals")


def _receive_for(receiver: _registry.Receiver) -> Callable[..., None]:
    """The function Django calls when a signal fires: record the call, queue it."""

    when, previous = receiver.when, receiver.previous

    def receive(signal: Signal, sender: Any, **kwargs: Any) -> None:
        # Saving a Django Q2 task or result, or an outbox row, must never
        # queue another task.
        if (
            isinstance(sender, ModelBase)
            and cast("type[Model]", sender)._meta.app_label in _OWN_APPS
        ):
            return
        if previous:
            kwargs["previous"] = _previous.values_for(
                receiver, kwargs["instance"], kwargs.get("using")
            )
        if when is not None and not when(signal=signal, sender=sender, **kwargs):
            return
        _commit.queue_call(_payload.encode_call(receiver, signal, sender, kwargs))

    # What Django's checks call it, for example when a lazy sender names no
    # model ("The function 'shop.signals.reindex' was connected ...").
    receive.__name__ = receive.__qualname__ = receiver.name
    return receive


#: Django Q2's signals about its own tasks.
_DJANGO_Q2_SIGNALS = (
    "post_spawn",
    "pre_enqueue",
    "pre_execute",
    "post_execute",
    "post_execute_in_worker",
)


def _check_signals(signal: Signal | Sequence[Signal]) -> tuple[Signal, ...]:
    signals = tuple(signal) if isinstance(signal, (list, tuple)) else (signal,)
    if not signals or not all(isinstance(each, Signal) for each in signals):
        raise TypeError(
            "async_receiver() takes a Signal or a list or tuple of Signals, "
            f"not {signal!r}."
        )
    # Looked up only if the project imported them: then they may be given.
    django_q = sys.modules.get("django_q.signals")
    own = {id(getattr(django_q, name, None)) for name in _DJANGO_Q2_SIGNALS}
    if any(id(each) in own for each in signals):
        raise ImproperlyConfigured(
            "Django Q2's own signals (pre_enqueue, pre_execute, post_execute, "
            "...) fire for every task: an async receiver for them would queue a "
            "task for every task, forever. Connect them with @receiver."
        )
    return signals


def _check_sender(sender: Any) -> None:
    if isinstance(sender, ModelBase):
        app_label = cast("type[Model]", sender)._meta.app_label
    elif isinstance(sender, str) and "." in sender:
        app_label = sender.split(".", 1)[0]
    else:
        return
    if app_label in _OWN_APPS:
        raise ImproperlyConfigured(
            f"{sender!r} is a model of Django Q2 or of this library: an async "
            "receiver for it would queue a task for every task that runs, forever."
        )


def _check_lookups_sender(lookups: tuple[str, ...], sender: Any) -> None:
    if lookups and not _names_a_model(sender):
        raise TypeError(
            "select_related and prefetch_related apply to the sender's model: "
            f"give a model, or 'app_label.ModelName', as sender, not {sender!r}."
        )


def _names_a_model(sender: Any) -> bool:
    return isinstance(sender, ModelBase) or (isinstance(sender, str) and "." in sender)


def _check_on_commit(on_commit: bool | None) -> None:
    if not (on_commit is None or isinstance(on_commit, bool)):
        raise TypeError(f"on_commit must be True, False or None, not {on_commit!r}.")


def _check_coalesce(coalesce: bool, on_commit: bool | None, snapshot: bool) -> None:
    if not isinstance(coalesce, bool):
        raise TypeError(f"coalesce must be True or False, not {coalesce!r}.")
    if coalesce and on_commit is False:
        raise TypeError(
            "coalesce=True merges the calls of one commit: it cannot be combined "
            "with on_commit=False, which queues each call at once."
        )
    if coalesce and snapshot:
        raise TypeError(
            "coalesce=True keeps one call per row, reloaded in the worker; "
            "snapshot=True passes each call the row as it was at its signal. "
            "Choose one."
        )


def _check_outbox(
    outbox: bool | None,
    on_commit: bool | None,
    retries: int,
    retry_backoff: float | None,
) -> None:
    if not (outbox is None or isinstance(outbox, bool)):
        raise TypeError(f"outbox must be True, False or None, not {outbox!r}.")
    if outbox and apps.apps_ready and not apps.is_installed("django_q_signals"):
        # Before the app registry is ready, the first signal says it instead.
        raise ImproperlyConfigured(
            _outbox.missing_app_message("A receiver with outbox=True")
        )
    if outbox and on_commit is False:
        raise TypeError(
            "outbox=True sends each call once its transaction has committed: it "
            "cannot be combined with on_commit=False."
        )
    if not (_conf.is_positive_int(retries) or retries == 0):
        raise TypeError(
            f"retries must be a whole number of 0 or more, not {retries!r}."
        )
    if retries and outbox is not True:
        raise TypeError(
            "retries needs outbox=True: a failed call is kept in the outbox until "
            "it runs again."
        )
    if retry_backoff is not None and not _conf.is_seconds(retry_backoff):
        raise TypeError(
            f"retry_backoff must be a number of seconds, not {retry_backoff!r}."
        )
    if retry_backoff is not None and not retries:
        raise TypeError("retry_backoff needs retries: how many times to run it again.")


def _check_row_options(outbox: bool | None, **options: bool | None) -> None:
    """``ordered`` and ``supersede``: True, False or None, and True only with
    the outbox, whose rows they work from."""
    for name, value in options.items():
        if not (value is None or isinstance(value, bool)):
            raise TypeError(f"{name} must be True, False or None, not {value!r}.")
        if value and outbox is not True:
            raise TypeError(
                f"{name} needs outbox=True: the calls of a row are kept, and "
                "put in order, in the outbox."
            )


def _check_when(when: Any) -> None:
    if when is not None and not callable(when):
        raise TypeError(
            f"when must be a function that takes the handler's arguments and "
            f"returns whether to queue the call, not {when!r}."
        )
    if inspect.iscoroutinefunction(when):
        raise TypeError(
            f"when={when.__qualname__} is an async function: it is called inside "
            "save(), where nothing awaits it. Make it a plain function."
        )


def _check_previous(
    previous: Sequence[str] | None, signals: tuple[Signal, ...], sender: Any
) -> tuple[str, ...]:
    if previous is None:
        return ()
    if (
        isinstance(previous, str)
        or not isinstance(previous, (list, tuple))
        or not previous
        or not all(isinstance(name, str) for name in previous)
    ):
        raise TypeError(f"previous must be a list of field names, not {previous!r}.")
    others = [each for each in signals if each not in (pre_save, post_save)]
    if others:
        raise TypeError(
            "previous= gives the values a model's fields had before a save: it "
            "works for pre_save and post_save only, not for "
            f"{', '.join(map(_signal_name, others))}."
        )
    if not _names_a_model(sender):
        raise TypeError(
            "previous= reads the fields of the sender's model: give a model, or "
            f"'app_label.ModelName', as sender, not {sender!r}."
        )
    return tuple(previous)


def _signal_name(signal: Signal) -> str:
    for name, each in vars(model_signals).items():
        if each is signal:
            return name
    return repr(signal)


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
