"""The outbox in Django's admin: what is still to run, and what failed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from django_q_signals import _dashboard, _order, _payload, _relay
from django_q_signals._cli.outbox_stats import span
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
        "progress",
        "next_attempt",
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
        "payload_of",
        "waits_for",
        "progress",
        "error",
    )
    readonly_fields = fields

    @admin.display(description="row")
    def row(self, call: OutboxCall) -> str:
        if not call.model:
            return "-"
        text = f"{call.model} pk={call.object_pk}"
        url = self._row_url(call)
        return format_html('<a href="{}">{}</a>', url, text) if url else text

    def _row_url(self, call: OutboxCall) -> str | None:
        """The change page of the call's row, if this admin site has one."""
        try:
            model = apps.get_model(call.model)
        except (LookupError, ValueError):
            return None  # A model removed, or renamed, since the call was written.
        opts = model._meta
        if (
            not self.admin_site.is_registered(model)
            or getattr(opts, "is_composite_pk", False)
            # A long pk's digest form: the pk itself is not kept.
            or _payload.DIGEST_MARK in call.object_pk
        ):
            return None
        try:
            return reverse(
                f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                args=[quote(call.object_pk)],
            )
        except NoReverseMatch:  # Its ModelAdmin has no change page.
            return None

    @admin.display(description="age", ordering="created")
    def age(self, call: OutboxCall) -> str:
        return span(call.created, timezone.now())

    @admin.display(description="progress")
    def progress(self, call: OutboxCall) -> str:
        """What the handler said of how far it is, while it runs."""
        return call.progress or "-"

    @admin.display(description="next attempt", ordering="due")
    def next_attempt(self, call: OutboxCall) -> str:
        """For a failed call, when the relay sends it again, if ever."""
        if call.state != OutboxCall.State.FAILED:
            return "-"
        if call.due is None:
            return "out of retries"
        now = timezone.now()
        return f"in {span(now, call.due)}" if call.due > now else "now"

    @admin.display(description="last error")
    def last_error(self, call: OutboxCall) -> str:
        # The exception line is the last one of the traceback: whole, as the
        # list wraps it.
        return call.error.strip().rpartition("\n")[2]

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
    def discard(
        self, request: HttpRequest, queryset: OutboxCallQuerySet
    ) -> TemplateResponse | None:
        """Asks first, on a page listing the calls, as Django's delete does."""
        if request.POST.get("post") == "yes":
            count = _order.discard(queryset)
            self.message_user(request, f"Discarded {count} call(s).", messages.SUCCESS)
            return None
        return self._page(
            request,
            "discard_confirmation.html",
            "Discard outbox calls",
            calls=queryset.order_by("pk"),
            action_checkbox_name=helpers.ACTION_CHECKBOX_NAME,
            media=self.media,
        )

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

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        dashboard = path(
            "dashboard/",
            self.admin_site.admin_view(self.dashboard),
            name=f"{opts.app_label}_{opts.model_name}_dashboard",
        )
        return [dashboard, *super().get_urls()]

    def dashboard(self, request: HttpRequest) -> TemplateResponse:
        """Per receiver, its calls by state and its last hour, and whether
        Django Q2 runs the tasks: for staff who may view the outbox."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return self._page(
            request, "dashboard.html", "Outbox dashboard", **_dashboard.context()
        )

    def _page(
        self, request: HttpRequest, template: str, title: str, **context: Any
    ) -> TemplateResponse:
        """One of the outbox's own admin pages, in the admin's frame."""
        opts = self.model._meta
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            f"admin/{opts.app_label}/{opts.model_name}/{template}",
            {
                **self.admin_site.each_context(request),
                "title": title,
                "subtitle": None,
                "opts": opts,
                **context,
            },
        )
