"""System checks: what would keep queued handlers from running."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.core.exceptions import FieldDoesNotExist
from django.db.models.constants import LOOKUP_SEP
from django.db.models.fields.reverse_related import ForeignObjectRel

from django_q_signals import _compat, _conf, _previous
from django_q_signals._registry import all_receivers

if TYPE_CHECKING:
    from django.db.models import Model

# Q_CLUSTER keys that choose a broker other than Django Q2's default, Redis.
_BROKER_KEYS = (
    "orm",
    "redis",
    "django_redis",
    "iron_mq",
    "sqs",
    "mongo",
    "broker_class",
)


def check_django_q_installed(**kwargs: Any) -> list[CheckMessage]:
    if apps.is_installed("django_q"):
        return []
    return [
        Error(
            "'django_q' is not in INSTALLED_APPS, so no worker can run async "
            "receivers.",
            hint="Add 'django_q' to INSTALLED_APPS and run migrate.",
            id="django_q_signals.E001",
        )
    ]


def check_q_cluster(**kwargs: Any) -> list[CheckMessage]:
    q_cluster = getattr(settings, "Q_CLUSTER", None)
    if not isinstance(q_cluster, dict):
        problem = (
            "Q_CLUSTER is not set"
            if q_cluster is None
            else f"Q_CLUSTER must be a dict, not {type(q_cluster).__name__}"
        )
        return [
            Error(
                f"{problem}: Django Q2 would fall back to a Redis broker on localhost.",
                hint="Set Q_CLUSTER, for example {'name': 'site', 'orm': 'default'} "
                "for the database broker.",
                id="django_q_signals.E002",
            )
        ]
    return _broker_errors(q_cluster)


def _broker_errors(q_cluster: dict[str, Any]) -> list[CheckMessage]:
    """Why the broker Q_CLUSTER chooses cannot work, if it cannot."""
    orm = q_cluster.get("orm")
    if orm is not None and orm not in settings.DATABASES:
        return [
            Error(
                f"Q_CLUSTER['orm'] names the database {orm!r}, which is not in "
                "DATABASES.",
                hint="Use one of: " + ", ".join(map(repr, settings.DATABASES)),
                id="django_q_signals.E004",
            )
        ]
    if not any(q_cluster.get(key) for key in _BROKER_KEYS):
        try:
            import redis  # noqa: F401
        except ImportError:
            return [
                Error(
                    "Q_CLUSTER names no broker, so Django Q2 uses Redis, but the "
                    "redis package is not installed.",
                    hint="Set Q_CLUSTER['orm'] = 'default' for the database broker, "
                    "or install redis and set Q_CLUSTER['redis'].",
                    id="django_q_signals.E005",
                )
            ]
    return []


def check_outbox_installed(**kwargs: Any) -> list[CheckMessage]:
    """Registered when the package is imported, not by its app: it reports
    the app missing."""
    if apps.is_installed("django_q_signals"):
        return []
    config = _conf.read()[0]
    users = [
        receiver.name
        for receiver in all_receivers()
        if receiver.is_connected() and receiver.option("outbox", config)
    ]
    if not users:
        return []
    return [
        Error(
            f"{', '.join(users)} keep their calls in the outbox, but "
            "'django_q_signals' is not in INSTALLED_APPS, so its table does not "
            "exist.",
            hint="Add 'django_q_signals' to INSTALLED_APPS and run migrate.",
            id="django_q_signals.E007",
        )
    ]


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    _, problems = _conf.read()
    return [
        Error(
            problem,
            hint="Q_SIGNALS takes BATCH_SIZE (a whole number), ON_COMMIT, "
            "OUTBOX, ORDERED and SUPERSEDE (True or False), OUTBOX_RELAY_AFTER "
            "(seconds), Q_OPTIONS (a dict of Django Q2 task options) and "
            "STATUS_PERMISSION (a function (request, instance) -> bool, or its "
            "dotted path).",
            id="django_q_signals.E003",
        )
        for problem in problems
    ]


#: Why a task timeout not below Q_CLUSTER['retry'] is a problem (W002).
_REDELIVERED = (
    "so a broker that redelivers unacknowledged tasks (the ORM broker, SQS, "
    "...) gives a task that is still running to a second worker, and its "
    "handler runs twice."
)
_RETRY_HINT = (
    "Set Q_CLUSTER['retry'] some seconds above the longest task timeout, or "
    "lower the timeout."
)


def check_retry_above_timeout(**kwargs: Any) -> list[CheckMessage]:
    q_cluster = getattr(settings, "Q_CLUSTER", None)
    if not isinstance(q_cluster, dict):
        return []  # E002
    retry = q_cluster.get("retry", 60)
    timeout = q_cluster.get("timeout")
    warnings: list[CheckMessage] = []
    if _not_below(timeout, retry):
        warnings.append(
            Warning(
                f"Q_CLUSTER['retry'] ({retry}) is not above Q_CLUSTER['timeout'] "
                f"({timeout}), {_REDELIVERED}",
                hint=_RETRY_HINT,
                id="django_q_signals.W002",
            )
        )
    warnings.extend(_receiver_timeouts_not_below(retry, timeout))
    return warnings


def _receiver_timeouts_not_below(
    retry: object, cluster_timeout: object
) -> list[CheckMessage]:
    """W002 for each receiver whose tasks have a timeout of their own that is
    not below ``retry``."""
    # The settings as they are, without logging what E003 reports.
    config, _ = _conf.read()
    warnings: list[CheckMessage] = []
    for receiver in all_receivers():
        if not receiver.is_connected():
            continue
        own_timeout = receiver.task_options(config).get("timeout")
        if own_timeout != cluster_timeout and _not_below(own_timeout, retry):
            warnings.append(
                Warning(
                    f"The tasks of {receiver.name} have a timeout of {own_timeout} "
                    f"seconds, not below Q_CLUSTER['retry'] ({retry}), "
                    f"{_REDELIVERED}",
                    hint=_RETRY_HINT,
                    obj=receiver.func,
                    id="django_q_signals.W002",
                )
            )
    return warnings


def check_relation_lookups(**kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for receiver in all_receivers():
        model = receiver.related_model
        if model is None or not receiver.is_connected():
            continue
        for kind, lookups, problem_in in (
            ("select_related", receiver.select_related, _select_related_problem),
            ("prefetch_related", receiver.prefetch_related, _prefetch_related_problem),
        ):
            for lookup in lookups:
                problem = problem_in(model, lookup)
                if problem:
                    errors.append(
                        Error(
                            f"{receiver.name}: {kind} {lookup!r} cannot be loaded "
                            f"with {model._meta.label}: {problem}.",
                            hint=f"Use the names of relations of {model._meta.label} "
                            "(the sender's model; for m2m_changed, the model that "
                            "declares the field).",
                            obj=receiver.func,
                            id="django_q_signals.E006",
                        )
                    )
    return errors


def check_previous_fields(**kwargs: Any) -> list[CheckMessage]:
    """``previous`` names, for receivers decorated before the models were
    ready (the others were checked at decoration)."""
    errors: list[CheckMessage] = []
    for receiver in all_receivers():
        model = receiver.sender_model
        if not receiver.previous or model is None or not receiver.is_connected():
            continue
        problem = _previous.problem(model, receiver.previous)
        if problem:
            errors.append(
                Error(
                    f"{receiver.name}: {problem}",
                    hint="Name fields of the sender's model (a foreign key by "
                    "its name or its column's, such as 'author' or 'author_id').",
                    obj=receiver.func,
                    id="django_q_signals.E008",
                )
            )
    return errors


def _select_related_problem(model: type[Model], lookup: str) -> str | None:
    """Why ``select_related(lookup)`` would fail on ``model``, if it would."""
    for name in lookup.split(LOOKUP_SEP):
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            return f"{model._meta.label} has no field {name!r}"
        forward = field.concrete and (field.many_to_one or field.one_to_one)
        reverse = not field.concrete and field.one_to_one
        if not (forward or reverse) or field.related_model is None:
            return (
                f"{model._meta.label}.{name} is not a foreign key or one-to-one "
                "relation"
            )
        model = field.related_model
    return None


def _prefetch_related_problem(model: type[Model], lookup: str) -> str | None:
    """Why ``prefetch_related(lookup)`` would fail on ``model``, if it would."""
    for name in lookup.split(LOOKUP_SEP):
        field = next(
            (f for f in model._meta.get_fields() if _accessor(f) == name), None
        )
        if field is None:
            return f"{model._meta.label} has no relation {name!r}"
        if not field.is_relation:
            return f"{model._meta.label}.{name} is not a relation"
        if field.related_model is None:
            return None  # A generic foreign key: its model varies by row.
        model = field.related_model
    return None


def _accessor(field: Any) -> str | None:
    """The attribute a field or reverse relation is reached by on instances."""
    if isinstance(field, ForeignObjectRel):
        return field.get_accessor_name()
    return str(field.name)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _not_below(timeout: object, retry: object) -> bool:
    numbers = (int, float)
    return (
        isinstance(timeout, numbers) and isinstance(retry, numbers) and timeout >= retry
    )


def check_receivers_importable(**kwargs: Any) -> list[CheckMessage]:
    warnings: list[CheckMessage] = []
    for receiver in all_receivers():
        if not receiver.is_connected():
            continue
        if receiver.module == "__main__":
            where = "in the __main__ module, which a worker process does not import"
        elif receiver.is_nested:
            where = (
                "inside a function, so a worker only knows it if it runs that function"
            )
        elif not _importable(receiver.module):
            where = f"in {receiver.module!r}, which cannot be imported by that name"
        else:
            continue
        warnings.append(
            Warning(
                f"The async receiver {receiver.name} is defined {where}.",
                hint="Define the handler at module level in a module that is "
                "imported when Django starts (for example from "
                "AppConfig.ready()).",
                obj=receiver.func,
                id="django_q_signals.W001",
            )
        )
    return warnings


def check_task_functions(**kwargs: Any) -> list[CheckMessage]:
    warnings: list[CheckMessage] = []
    for receiver in all_receivers():
        if not (receiver.is_connected() and _compat.user_attribute(receiver)):
            continue
        name = f"{receiver.module}.{_compat.task_function_name(receiver)}"
        warnings.append(
            Warning(
                f"{name} is defined in its module, so the 0.x task function of "
                f"the async receiver {receiver.name} was not written there: a "
                "task queued by django-q-signals 0.x for that handler would "
                f"call the module's own {name} instead.",
                hint=f"Rename your {name} so that such tasks reach the handler, "
                "or silence this check once no task queued by 0.x is left.",
                obj=receiver.func,
                id="django_q_signals.W003",
            )
        )
    return warnings
