"""``{% load qsignals %}``: ``{% qsignals_status obj %}`` renders the status
fragment of ``obj``'s row in a page."""

from __future__ import annotations

from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model
from django.template.loader import render_to_string

from django_q_signals import _fragment

register = template.Library()


@register.simple_tag(takes_context=True)
def qsignals_status(context: template.Context, instance: Model) -> str:
    """The row's outbox calls still to run, polling while there are any; for
    users ``STATUS_PERMISSION`` refuses, nothing."""
    request: Any = context.get("request")
    if request is None:
        raise ImproperlyConfigured(
            "{% qsignals_status %} needs the request in the template context: "
            "add 'django.template.context_processors.request' to the "
            "context_processors of TEMPLATES, or render with the request."
        )
    if not (_fragment.may_see(request, None) and _fragment.may_see(request, instance)):
        return ""
    return render_to_string(_fragment.TEMPLATE, _fragment.context(instance), request)
