"""System checks: what would keep queued handlers from running."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from django_q_signals._receivers import all_receivers


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
    orm = q_cluster.get("orm")
    if orm is not None and orm not in settings.DATABASES:
        return [
            Error(
                f"Q_CLUSTER['orm'] names the database {orm!r}, which is not in "
                "DATABASES.",
                hint="Use one of: " + ", ".join(map(repr, settings.DATABASES)),
                id="django_q_signals.E002",
            )
        ]
    return []


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
        else:
            continue
        warnings.append(
            Warning(
                f"The async receiver {receiver.key} is defined {where}.",
                hint="Define the handler at module level in a module that is "
                "imported when Django starts (for example from "
                "AppConfig.ready()).",
                obj=receiver.func,
                id="django_q_signals.W001",
            )
        )
    return warnings
