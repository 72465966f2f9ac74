"""Views, and a mixin for your own views, about a row's outbox calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django_q_signals._status import RowBusy, ensure_idle

if TYPE_CHECKING:
    from django.forms import BaseForm
    from django.http import HttpResponse


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
