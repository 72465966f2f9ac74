"""The status fragment: a row's outbox calls still to run, as a piece of
HTML that polls itself with htmx while they run; who may see it; and the row
a fragment's URL names."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import router
from django.http import Http404
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from django_q_signals import _conf
from django_q_signals._outbox import pending

if TYPE_CHECKING:
    from django.db.models import Model
    from django.http import HttpRequest

    from django_q_signals.models import OutboxCall

TEMPLATE = "django_q_signals/status.html"


def may_see(request: HttpRequest, instance: Model | None) -> bool:
    """Whether ``STATUS_PERMISSION`` lets the request's user see fragments
    (``instance`` None), or the fragment of ``instance``'s row."""
    check = _conf.get().status_permission
    if isinstance(check, str):
        check = import_string(check)
    return bool(check(request, instance))


class Shown(NamedTuple):
    """One call, as the fragment shows it."""

    handler: str
    receiver: str
    state: str
    progress: str
    #: Percent done, where the handler said of how much.
    percent: float | None
    age: str


def context(instance: Model) -> dict[str, Any]:
    """What the fragment's template gets: the row's calls still to run, the
    fragment's own URL, and how often it polls."""
    now = timezone.now()
    calls = [shown(call, now) for call in pending(instance).order_by("pk")]
    return {"calls": calls, "url": url(instance), "poll": "every 2s"}


def shown(call: OutboxCall, now: datetime) -> Shown:
    done, total = call.progress_done, call.progress_total
    return Shown(
        handler=call.receiver.partition("#")[0].rpartition(".")[2],
        receiver=call.receiver,
        state=call.state,
        progress=call.progress,
        percent=(
            min(100.0, done / total * 100) if done is not None and total else None
        ),
        age=age(now - call.created),
    )


def age(elapsed: Any) -> str:
    seconds = max(0, int(elapsed.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def url(instance: Model) -> str:
    """The fragment's URL: the model's label and the row's pk, and the
    database where it is not the one the row's model is read from."""
    model = type(instance)
    address = reverse(
        "django_q_signals:status",
        kwargs={"label": model._meta.label_lower, "pk": instance.pk},
    )
    alias = instance._state.db
    if alias and alias != router.db_for_read(model):
        address += "?" + urlencode({"using": alias})
    return address


def find(label: str, pk: str, using: str | None) -> Model:
    """The row a fragment's URL names; ``Http404`` if there is none."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise Http404("No such model.") from None
    alias = using or router.db_for_read(model)
    if alias not in settings.DATABASES:
        raise Http404("No such database.")
    try:
        instance: Model = model._base_manager.using(alias).get(pk=pk)
    except (model.DoesNotExist, ValueError, ValidationError):
        raise Http404("No such row.") from None
    return instance
