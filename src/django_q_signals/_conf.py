"""Project-wide defaults from ``settings.Q_SIGNALS``, read each time they are used.

Reading lazily keeps ``override_settings(Q_SIGNALS=...)`` working in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    "BATCH_SIZE": 500,
}


def _get(name: str) -> Any:
    configured = getattr(settings, "Q_SIGNALS", {})
    if not isinstance(configured, dict):
        raise ImproperlyConfigured(
            f"settings.Q_SIGNALS must be a dict, not {type(configured).__name__}."
        )
    unknown = sorted(set(configured) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown settings.Q_SIGNALS keys {', '.join(map(repr, unknown))}; "
            f"the known ones are {', '.join(sorted(DEFAULTS))}."
        )
    return configured.get(name, DEFAULTS[name])


def batch_size() -> int:
    size = _get("BATCH_SIZE")
    if not is_positive_int(size):
        raise ImproperlyConfigured(
            f"settings.Q_SIGNALS['BATCH_SIZE'] must be a whole number of 1 or "
            f"more, not {size!r}."
        )
    return int(size)


def is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
