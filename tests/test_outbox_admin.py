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
from django.urls import reverse
from django.utils import timezone

from django_q_signals.models import OutboxCall
from django_q_signals.worker import run_call
from tests.conftest import Connect, path, purge, queued_tasks
from tests.models import Article, Author

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


def test_discard_asks_first_on_a_page_listing_the_calls(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    first = failed_calls[0]
    response = staff.post(
        CHANGELIST, {"action": "discard", "_selected_action": [first.pk]}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Discard the selected outbox calls?" in page
    assert (
        f'<a href="{CHANGELIST}{first.pk}/change/">{first.pk}</a>:\n'
        f"    {escape(first.receiver)} for tests.Article pk={first.object_pk},\n"
        "    failed after 1 attempt</li>"
    ) in page
    assert f'<input type="hidden" name="_selected_action" value="{first.pk}">' in page
    assert '<input type="hidden" name="post" value="yes">' in page
    assert OutboxCall.objects.count() == len(failed_calls)


def test_discard_deletes_the_calls_once_confirmed(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    response = staff.post(
        CHANGELIST,
        {"action": "discard", "_selected_action": [failed_calls[0].pk], "post": "yes"},
        follow=True,
    )
    assert "Discarded 1 call(s)." in response.content.decode()
    assert list(OutboxCall.objects.values_list("pk", flat=True)) == [failed_calls[1].pk]


def test_the_row_links_to_its_change_page_where_the_admin_has_one(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    call = failed_calls[0]
    page = staff.get(CHANGELIST).content.decode()
    assert (
        f'<a href="/admin/tests/article/{call.object_pk}/change/">'
        f"tests.Article pk={call.object_pk}</a>"
    ) in page


@pytest.mark.parametrize(
    ("model", "object_pk"),
    [
        ("tests.Author", "1"),
        ("gone.Model", "1"),
        ("tests.Article", "1…sha256:" + "0" * 64),
        ("tests.Nothing", "1"),
    ],
    ids=["not in the admin", "no such app", "a long pk's digest", "no such model"],
)
def test_the_row_is_text_where_the_admin_has_no_page(
    staff: Client, model: str, object_pk: str
) -> None:
    OutboxCall.objects.create(receiver="shop.h", model=model, object_pk=object_pk)
    page = staff.get(CHANGELIST).content.decode()
    assert f'<td class="field-row">{model} pk={object_pk}</td>' in page


def test_the_row_is_text_where_its_admin_has_no_change_page(staff: Client) -> None:
    from django.contrib import admin

    reverse("admin:index")  # The admin's URLs are made, without Author's.
    admin.site.register(Author)
    try:
        OutboxCall.objects.create(
            receiver="shop.h", model="tests.Author", object_pk="1"
        )
        page = staff.get(CHANGELIST).content.decode()
    finally:
        admin.site.unregister(Author)
    assert '<td class="field-row">tests.Author pk=1</td>' in page


def test_a_call_without_a_row_shows_none(staff: Client) -> None:
    OutboxCall.objects.create(receiver="shop.h")
    page = staff.get(CHANGELIST).content.decode()
    assert '<td class="field-row">-</td>' in page


@pytest.mark.parametrize(
    ("age", "shown"),
    [
        # A few tenths more: the page is made a moment after the call.
        (timedelta(seconds=12.2), "12 seconds"),
        (timedelta(seconds=1.2), "1 second"),
        (timedelta(minutes=3, seconds=5), "3\xa0minutes"),
    ],
)
def test_the_age_is_in_seconds_under_a_minute(
    staff: Client, age: timedelta, shown: str
) -> None:
    OutboxCall.objects.create(receiver="shop.h", created=timezone.now() - age)
    page = staff.get(CHANGELIST).content.decode()
    assert f'<td class="field-age">{shown}</td>' in page


@pytest.mark.parametrize(
    ("state", "due", "shown"),
    [
        ("failed", timedelta(minutes=5, seconds=30), "in 5\xa0minutes"),
        ("failed", timedelta(seconds=-5), "now"),
        ("failed", None, "out of retries"),
        ("running", timedelta(minutes=5), "-"),
        ("sent", None, "-"),
    ],
    ids=["retry due later", "retry due now", "out of retries", "running", "sent"],
)
def test_the_next_attempt_of_a_failed_call(
    staff: Client, state: str, due: timedelta | None, shown: str
) -> None:
    OutboxCall.objects.create(
        receiver="shop.h",
        state=state,
        due=None if due is None else timezone.now() + due,
    )
    page = staff.get(CHANGELIST).content.decode()
    assert f'<td class="field-next_attempt">{shown}</td>' in page


def test_the_last_error_is_shown_whole(staff: Client) -> None:
    error = "ValueError: " + "a long message " * 20
    OutboxCall.objects.create(
        receiver="shop.h",
        state="failed",
        error=f"Traceback (most recent call last):\n  File 'x'\n{error}\n",
    )
    page = staff.get(CHANGELIST).content.decode()
    assert f'<td class="field-last_error">{error.strip()}</td>' in page


def test_a_call_shows_its_whole_error(
    staff: Client, failed_calls: list[OutboxCall]
) -> None:
    page = staff.get(f"{CHANGELIST}{failed_calls[0].pk}/change/").content.decode()
    assert "Traceback (most recent call last)" in page


def test_calls_cannot_be_added_by_hand(staff: Client) -> None:
    assert staff.get(f"{CHANGELIST}add/").status_code == 403


@pytest.mark.parametrize(
    ("done", "total", "note", "shown"),
    [
        (12, 30, "pages", "40% pages"),
        (7, None, "", "7"),
        (None, None, "", "-"),
    ],
    ids=["of a total", "a count", "nothing said"],
)
def test_the_list_shows_what_a_running_handler_said_of_its_progress(
    staff: Client, done: float | None, total: float | None, note: str, shown: str
) -> None:
    OutboxCall.objects.create(
        receiver="shop.h",
        state="running",
        progress_done=done,
        progress_total=total,
        progress_note=note,
    )
    page = staff.get(CHANGELIST).content.decode()
    assert f'<td class="field-progress">{shown}</td>' in page


def test_the_list_links_to_the_dashboard(staff: Client) -> None:
    page = staff.get(CHANGELIST).content.decode()
    assert f'<a href="{CHANGELIST}dashboard/" class="viewlink">Dashboard</a>' in page
