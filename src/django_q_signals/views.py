"""Views, and a mixin for your own views, about a row's outbox calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from django_q_signals import _fragment
from django_q_signals._status import RowBusy, ensure_idle

if TYPE_CHECKING:
    from django.db.models import Model
    from django.forms import BaseForm
    from django.http import HttpRequest, HttpResponse


def staff_with_view_permission(request: HttpRequest, instance: Model | None) -> bool:
    """The default ``STATUS_PERMISSION``: staff users with the permission to
    view outbox calls (``django_q_signals.view_outboxcall``), whatever the row."""
    user = request.user
    return bool(user.is_staff and user.has_perm("django_q_signals.view_outboxcall"))


@never_cache
@require_GET
def status(request: HttpRequest, label: str, pk: str) -> HttpResponse:
    """The status fragment of the row ``pk`` of the model ``label``
    (``app_label.model_name``), on the database ``?using=`` names, if any.

    403 for users ``STATUS_PERMISSION`` refuses, before the row is looked up;
    404 for a row that does not exist, to the users it allows.
    """
    if not _fragment.may_see(request, None):
        raise PermissionDenied
    instance = _fragment.find(label, pk, request.GET.get("using"))
    if not _fragment.may_see(request, instance):
        raise PermissionDenied
    return TemplateResponse(request, _fragment.TEMPLATE, _fragment.context(instance))


class IdleRowRequiredMixin:
    """For Django's ``UpdateView``, ``DeleteView`` and other editing views of
    one object: while outbox calls for the object's row are still to run,
    the form is shown again with the reason as its error, and nothing is
    saved or deleted.

    ``idle_row_handlers`` narrows the calls that count to some handlers (the
    functions, or their dotted paths).
    """

    #: The handlers whose calls count (functions or dotted paths); None: all.
    idle_row_handlers: list[Callable[..., Any] | str] | None = None

    object: Any

    def form_valid(self, form: BaseForm) -> HttpResponse:
        handlers: list[Callable[..., Any] | str | None] = (
            list(self.idle_row_handlers) if self.idle_row_handlers else [None]
        )
        try:
            for handler in handlers:
                ensure_idle(self.object, handler)
        except RowBusy as busy:
            form.add_error(None, str(busy))
            return self.form_invalid(form)  # type: ignore[attr-defined,no-any-return]
        return super().form_valid(form)  # type: ignore[misc,no-any-return]
