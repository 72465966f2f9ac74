"""The outbox in Django's admin: what is still to run, and what failed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.timesince import timesince

from django_q_signals import _order, _relay
from django_q_signals.models import OutboxCall, OutboxCallQuerySet

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[OutboxCall]
else:
    ModelAdmin = admin.ModelAdmin


@admin.register(OutboxCall)
class OutboxCallAdmin(ModelAdmin):
    list_display = (
        "receiver",
        "state",
        "row",
        "attempts",
        "age",
        "last_error",
        "waits_for",
    )
    list_filter = ("state", "receiver")
    search_fields = ("receiver", "object_pk")
    ordering = ("-created",)
    actions = ("send_again", "discard")
    fields = (
        "receiver",
        "state",
        "model",
        "object_pk",
        "attempts",
        "created",
        "sent",
        "due",
        "waits_for",
        "error",
    )
    readonly_fields = fields

    @admin.display(description="row")
    def row(self, call: OutboxCall) -> str:
        return f"{call.model} pk={call.object_pk}" if call.model else "-"

    @admin.display(description="age", ordering="created")
    def age(self, call: OutboxCall) -> str:
        return timesince(call.created)

    @admin.display(description="last error")
    def last_error(self, call: OutboxCall) -> str:
        # The exception line is the last one of the traceback.
        return call.error.strip().rpartition("\n")[2][:120]

    @admin.display(description="waits for")
    def waits_for(self, call: OutboxCall) -> str:
        """For a waiting call, the call of its row that runs first."""
        blocker = call.blocked_by
        if blocker is None:
            return "-"
        url = reverse("admin:django_q_signals_outboxcall_change", args=[blocker.pk])
        return format_html('<a href="{}">{} ({})</a>', url, blocker.pk, blocker.state)

    @admin.action(description="Send again now", permissions=["change"])
    def send_again(self, request: HttpRequest, queryset: OutboxCallQuerySet) -> None:
        selected = queryset.count()
        sent = _relay.send_again(queryset)
        skipped = selected - sent
        text = f"Sent {sent} call(s) to the broker."
        if skipped:
            text += f" {skipped} left as they are: running, or not found by a receiver."
        self.message_user(request, text, messages.SUCCESS)

    @admin.action(description="Discard", permissions=["delete"])
    def discard(self, request: HttpRequest, queryset: OutboxCallQuerySet) -> None:
        count = _order.discard(queryset)
        self.message_user(request, f"Discarded {count} call(s).", messages.SUCCESS)

    def get_actions(
        self, request: HttpRequest, action_location: Any = None
    ) -> dict[str, Any]:
        # Django 6.1 says where the actions are shown; earlier versions do not.
        where = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **where)
        # "Discard" does what Django's delete action would, named for the outbox.
        actions.pop("delete_selected", None)
        return actions

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
