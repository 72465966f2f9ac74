"""The outbox in Django's admin, through Django's test client."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from html import escape
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models.signals import post_save
from django.test import Client
from django.utils import timezone

from django_q_signals.models import OutboxCall
from django_q_signals.worker import run_call
from tests.conftest import Connect, path, purge, queued_tasks
from tests.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/django_q_signals/outboxcall/"


@pytest.fixture
def staff() -> Client:
    User.objects.create_superuser("admin", "admin@example.com", "secret")
    client = Client()
    client.login(username="admin", password="secret")
    return client


@pytest.fixture
def failed_calls(connect: Connect[Any]) -> list[OutboxCall]:
    """Three outbox calls of a handler that failed on "b" and "c"."""

    @connect(post_save, sender=Article, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        if instance.title != "a":
            raise ValueError(f"cannot index {instance.title}")

    for title in "abc":
        Article.objects.create(title=title)
    for task in queued_tasks():
        with contextlib.suppress(ValueError):
            run_call(*task["args"])
    purge()
    return list(OutboxCall.objects.order_by("pk"))


def test_the_list_shows_handler_state_row_attempts_and_error(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    page = staff.get(CHANGELIST).content.decode()
    first = failed_calls[0]
    assert escape(first.receiver) in page
    assert f"tests.Article pk={first.object_pk}" in page
    assert "ValueError: cannot index b" in page
    assert page.count('<td class="field-state">Failed</td>') == len(failed_calls)


def test_the_list_filters_by_state_and_handler(
    staff: Client, failed_calls: list[OutboxCall], connect: Connect[Any]
) -> None:
    @connect(post_save, sender=Article, outbox=True)
    def other(**kwargs: Any) -> None:
        pass

    Article.objects.create(title="d")
    failed = staff.get(CHANGELIST, {"state__exact": "failed"})
    assert len(failed.context["cl"].result_list) == 2
    by_handler = staff.get(CHANGELIST, {"receiver": path(other)})
    assert [call.receiver for call in by_handler.context["cl"].result_list] == [
        path(other)
    ]


def test_send_again_now_puts_the_calls_on_the_broker(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    ids = [call.pk for call in failed_calls]
    response = staff.post(
        CHANGELIST,
        {"action": "send_again", "_selected_action": ids},
        follow=True,
    )
    assert "Sent 2 call(s) to the broker." in response.content.decode()
    assert len(queued_tasks()) == 2
    assert set(OutboxCall.objects.values_list("state", flat=True)) == {"sent"}


def test_send_again_now_leaves_a_running_call(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    running, failed = failed_calls
    later = timezone.now() + timedelta(minutes=1)
    OutboxCall.objects.filter(pk=running.pk).update(state="running", due=later)
    response = staff.post(
        CHANGELIST,
        {"action": "send_again", "_selected_action": [running.pk, failed.pk]},
        follow=True,
    )
    assert (
        "Sent 1 call(s) to the broker. 1 left as they are: running, or not found "
        "by a receiver."
    ) in response.content.decode()
    assert len(queued_tasks()) == 1


def test_discard_deletes_the_calls(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    response = staff.post(
        CHANGELIST,
        {"action": "discard", "_selected_action": [failed_calls[0].pk]},
        follow=True,
    )
    assert "Discarded 1 call(s)." in response.content.decode()
    assert list(OutboxCall.objects.values_list("pk", flat=True)) == [failed_calls[1].pk]


def test_a_call_shows_its_whole_error(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    page = staff.get(f"{CHANGELIST}{failed_calls[0].pk}/change/").content.decode()
    assert "Traceback (most recent call last)" in page


def test_calls_cannot_be_added_by_hand(staff: Client) -> None:
    assert staff.get(f"{CHANGELIST}add/").status_code == 403
