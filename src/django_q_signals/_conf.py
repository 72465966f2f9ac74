"""Project-wide defaults from ``settings.Q_SIGNALS``.

Read on first use and again after ``override_settings`` changes them, never
at import, so decorating handlers works before settings are configured.

A bad value does not raise: it is read inside users' ``save()`` calls and
commit callbacks, where raising would break a request or lose the calls of a
committed transaction. The default is used instead, an ERROR is logged, and
the system check ``django_q_signals.E003`` reports it.
"""

from __future__ import annotations

import difflib
import logging
import pickle
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

logger = logging.getLogger("django_q_signals")


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_task_name(value: object) -> bool:
    # Django Q2 saves it in a 100-character column.
    return _is_text(value) and len(value) <= 100  # type: ignore[arg-type]


def _is_timeout(value: object) -> bool:
    return value is None or is_positive_int(value)


def _is_cached(value: object) -> bool:
    return isinstance(value, bool) or is_positive_int(value)


def _is_hook(value: object) -> bool:
    if _is_text(value):
        return "." in value  # type: ignore[operator]
    # A worker gets it by reference: a function at module level.
    return callable(value) and _picklable(value)


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _is_broker(value: object) -> bool:
    return callable(getattr(value, "enqueue", None))


#: Options Django Q2 reads from ``async_task(q_options=...)``: what each must
#: be, and a test for it.
Q_OPTIONS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "ack_failure": ("True or False", _is_bool),
    "broker": ("a Django Q2 broker object", _is_broker),
    "cached": ("True, False or a number of seconds", _is_cached),
    "cluster": ("the name of a cluster", _is_text),
    "group": ("a group name", _is_text),
    "hook": ("a module-level function, or its dotted path", _is_hook),
    "save": ("True or False", _is_bool),
    "sync": ("True or False", _is_bool),
    "task_name": ("a name of at most 100 characters", _is_task_name),
    "timeout": ("a whole number of seconds, or None", _is_timeout),
}
Q_OPTION_NAMES = frozenset(Q_OPTIONS)


class Config(NamedTuple):
    batch_size: int = 500
    on_commit: bool = True
    outbox: bool = False
    outbox_relay_after: float = 30.0
    q_options: dict[str, Any] = {}  # noqa: RUF012 (never mutated)
    ordered: bool = False
    supersede: bool = False
    status_permission: Callable[..., bool] | str = (
        "django_q_signals.views.staff_with_view_permission"
    )


DEFAULTS = Config()

_SETTING_NAMES = {
    "BATCH_SIZE": "batch_size",
    "ON_COMMIT": "on_commit",
    "OUTBOX": "outbox",
    "OUTBOX_RELAY_AFTER": "outbox_relay_after",
    "Q_OPTIONS": "q_options",
    "ORDERED": "ordered",
    "SUPERSEDE": "supersede",
    "STATUS_PERMISSION": "status_permission",
}

_config: Config | None = None


def get() -> Config:
    """The validated settings, with defaults in place of what is missing or bad."""
    global _config
    if _config is None:
        config, problems = read()
        for problem in problems:
            logger.error("%s The default is used instead.", problem)
        _config = config
    return _config


def value_of(setting: str, config: Config | None = None) -> Any:
    """The value of a ``Q_SIGNALS`` key, as used: given, or the default (in
    ``config``, or else the settings')."""
    return getattr(config or get(), _SETTING_NAMES[setting])


def origin(setting: str) -> str:
    """Where the value of a ``Q_SIGNALS`` key comes from, for people."""
    configured = getattr(settings, "Q_SIGNALS", {})
    if isinstance(configured, dict) and setting in configured:
        return f"from Q_SIGNALS[{setting!r}]"
    return "default"


def read() -> tuple[Config, list[str]]:
    """``settings.Q_SIGNALS`` as a Config, and what is wrong with it."""
    configured = getattr(settings, "Q_SIGNALS", {})
    if not isinstance(configured, dict):
        return DEFAULTS, [
            f"settings.Q_SIGNALS must be a dict, not {type(configured).__name__}."
        ]
    problems = []
    for unknown in sorted(set(configured) - set(_SETTING_NAMES), key=str):
        problems.append(
            f"Unknown settings.Q_SIGNALS key {with_guess(unknown, _SETTING_NAMES)}; "
            f"the known ones are {', '.join(sorted(_SETTING_NAMES))}."
        )
    values = {}
    for name, field in _SETTING_NAMES.items():
        if name in configured:
            problem = _VALIDATORS[name](configured[name])
            if problem:
                problems.append(problem)
            else:
                values[field] = configured[name]
    if "q_options" in values:
        values["q_options"] = dict(values["q_options"])
    return DEFAULTS._replace(**values), problems


def with_guess(name: object, known: Iterable[str] = Q_OPTION_NAMES) -> str:
    """``name`` quoted, with the known name it is likely a typo of."""
    guess = difflib.get_close_matches(str(name), list(known), n=1)
    return f"{name!r} (did you mean {guess[0]!r}?)" if guess else repr(name)


def is_seconds(value: object) -> bool:
    """A number of seconds, 0 or more."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    )


def is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def q_options_problem(q_options: object, where: str) -> str | None:
    """What is wrong with ``q_options`` given as ``where``, if anything."""
    if not isinstance(q_options, dict):
        return f"{where} must be a dict, not {q_options!r}."
    unknown = sorted(set(q_options) - Q_OPTION_NAMES, key=str)
    if unknown:
        problem = (
            f"Unknown {where} {', '.join(map(with_guess, unknown))}. Django Q2 "
            f"task options are: {', '.join(sorted(Q_OPTION_NAMES))}."
        )
        cluster_wide = sorted({"retry", "max_attempts"} & set(unknown))
        if cluster_wide:
            problem += (
                f" {' and '.join(cluster_wide)} can only be set for the whole "
                "cluster, in Q_CLUSTER."
            )
        return problem
    bad = [
        f"{name!r} must be {Q_OPTIONS[name][0]}, not {value!r}"
        for name, value in q_options.items()
        if not Q_OPTIONS[name][1](value)
    ]
    if bad:
        return f"In {where}, {'; '.join(bad)}."
    return None


def _batch_size_problem(value: object) -> str | None:
    if is_positive_int(value):
        return None
    return (
        "settings.Q_SIGNALS['BATCH_SIZE'] must be a whole number of 1 or more, "
        f"not {value!r}."
    )


def _on_commit_problem(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    return f"settings.Q_SIGNALS['ON_COMMIT'] must be True or False, not {value!r}."


def _true_or_false(setting: str) -> Callable[[object], str | None]:
    def problem(value: object) -> str | None:
        if isinstance(value, bool):
            return None
        return f"settings.Q_SIGNALS[{setting!r}] must be True or False, not {value!r}."

    return problem


def _relay_after_problem(value: object) -> str | None:
    if is_seconds(value):
        return None
    return (
        "settings.Q_SIGNALS['OUTBOX_RELAY_AFTER'] must be a number of seconds, "
        f"not {value!r}."
    )


def _q_options_problem(value: object) -> str | None:
    where = "settings.Q_SIGNALS['Q_OPTIONS']"
    problem = q_options_problem(value, where)
    if problem is None and "task_name" in value:  # type: ignore[operator]
        # One name for every receiver's tasks would hide which ran.
        return (
            f"{where} cannot set task_name: each receiver's tasks are named after it."
        )
    return problem


def _status_permission_problem(value: object) -> str | None:
    where = "settings.Q_SIGNALS['STATUS_PERMISSION']"
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            return f"{where} cannot be imported: {exc}."
    if callable(value):
        return None
    return (
        f"{where} must be a function (request, instance) -> bool, or its dotted "
        f"path, not {value!r}."
    )


_VALIDATORS = {
    "BATCH_SIZE": _batch_size_problem,
    "ON_COMMIT": _on_commit_problem,
    "OUTBOX": _true_or_false("OUTBOX"),
    "OUTBOX_RELAY_AFTER": _relay_after_problem,
    "Q_OPTIONS": _q_options_problem,
    "ORDERED": _true_or_false("ORDERED"),
    "SUPERSEDE": _true_or_false("SUPERSEDE"),
    "STATUS_PERMISSION": _status_permission_problem,
}


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _config
    if setting == "Q_SIGNALS":
        _config = None


setting_changed.connect(_reset, dispatch_uid="django_q_signals._conf")
