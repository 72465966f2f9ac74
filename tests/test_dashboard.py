"""The outbox's dashboard in the admin, through Django's test client."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from html import escape
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models.signals import post_save
from django.test import Client, override_settings
from django.utils import timezone

from django_q_signals import _brokers, _dashboard, _history, _registry
from django_q_signals.models import OutboxCall
from django_q_signals.worker import run_call
from tests.conftest import Connect, custom, path, queued_tasks
from tests.models import Article
from tests.test_command import shared_cache

pytestmark = pytest.mark.django_db(databases=["default", "other"])

DASHBOARD = "/admin/django_q_signals/outboxcall/dashboard/"


def logged_in(*, staff: bool, may_view: bool) -> Client:
    user = User.objects.create_user("someone", password="secret", is_staff=staff)
    if may_view:
        user.user_permissions.add(Permission.objects.get(codename="view_outboxcall"))
    client = Client()
    client.login(username="someone", password="secret")
    return client


@pytest.fixture
def viewer() -> Client:
    """A staff user who may view the outbox, and nothing else."""
    return logged_in(staff=True, may_view=True)


def test_anonymous_users_are_sent_to_log_in() -> None:
    response = Client().get(DASHBOARD)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={DASHBOARD}"


def test_users_who_are_not_staff_are_sent_to_log_in() -> None:
    response = logged_in(staff=False, may_view=True).get(DASHBOARD)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_staff_without_the_outboxs_view_permission_are_refused() -> None:
    assert logged_in(staff=True, may_view=False).get(DASHBOARD).status_code == 403


def test_staff_with_the_outboxs_view_permission_see_it(viewer: Client) -> None:
    response = viewer.get(DASHBOARD)
    assert response.status_code == 200
    assert "<h1>Outbox dashboard</h1>" in response.content.decode()


def line(client: Client, name: str) -> _dashboard.Line:
    lines: list[_dashboard.Line] = client.get(DASHBOARD).context["lines"]
    [found] = [each for each in lines if each.name == name]
    return found


def test_each_receiver_shows_its_calls_by_state_and_the_oldests_age(
    viewer: Client,
) -> None:
    now = timezone.now()
    for state, age in [("sent", 30), ("failed", 200), ("failed", 5), ("waiting", 1)]:
        OutboxCall.objects.create(
            receiver="shop.reindex", state=state, created=now - timedelta(seconds=age)
        )
    OutboxCall.objects.using("other").create(
        receiver="shop.reindex", state="running", created=now - timedelta(minutes=20)
    )
    shown = line(viewer, "shop.reindex")
    assert shown.counts == [
        ("queued", 0),
        ("sent", 1),
        ("running", 1),
        ("failed", 2),
        ("waiting", 1),
    ]
    assert shown.oldest == "20 minutes"
    assert (shown.runs, shown.failures, shown.median, shown.p95) == (0, 0, "-", "-")


def test_each_receiver_shows_its_last_hour(viewer: Client) -> None:
    _history.record("default", "shop.reindex", runs=9, failures=2, waits=[0.02] * 9)
    _history.record("other", "shop.reindex", runs=1, failures=0, waits=[4.0])
    shown = line(viewer, "shop.reindex")
    assert (shown.runs, shown.failures, shown.median, shown.p95) == (
        10,
        2,
        "20 ms",
        "3.9 s",
    )
    assert shown.oldest == "-"
    page = viewer.get(DASHBOARD).content.decode()
    assert '<td class="number failures">2</td>' in page
    assert '<td class="number">3.9 s</td>' in page


def test_an_outbox_receiver_with_nothing_to_show_is_listed(
    viewer: Client, connect: Connect[Any]
) -> None:
    @connect(custom, outbox=True)
    def idle(**kwargs: Any) -> None:
        pass

    @connect(custom)
    def without_outbox(**kwargs: Any) -> None:
        pass

    names = [each.name for each in viewer.get(DASHBOARD).context["lines"]]
    assert path(idle) in names
    assert path(without_outbox) not in names
    page = viewer.get(DASHBOARD).content.decode()
    assert f'<td class="handler">{escape(path(idle))}</td>' in page


def test_with_no_outbox_receiver_and_no_call_it_says_so(
    viewer: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_registry", {})
    page = viewer.get(DASHBOARD).content.decode()
    assert "No receiver uses the outbox, and the outbox is empty." in page


def test_it_warns_when_tasks_wait_and_no_cluster_runs(
    viewer: Client, connect: Connect[Any], tmp_path: Path
) -> None:
    @connect(custom, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, n=1)
    custom.send(sender=None, n=2)
    with override_settings(CACHES=shared_cache(tmp_path)):
        response = viewer.get(DASHBOARD)
    page = response.content.decode()
    assert "<td>none running</td>" in page
    assert "2 tasks waiting" in page
    assert (
        '<li class="warning qsignals-warning">2 tasks wait on the broker and no '
        "qcluster runs them: start one with `python manage.py qcluster`.</li>"
    ) in page


def test_it_does_not_warn_when_no_task_waits(viewer: Client, tmp_path: Path) -> None:
    with override_settings(CACHES=shared_cache(tmp_path)):
        page = viewer.get(DASHBOARD).content.decode()
    assert "<td>none running</td>" in page
    assert "qsignals-warning" not in page


def test_it_says_when_it_cannot_see_the_clusters(
    viewer: Client, connect: Connect[Any]
) -> None:
    @connect(custom, on_commit=False)
    def handler(**kwargs: Any) -> None:
        pass

    custom.send(sender=None, n=1)
    if not _brokers.is_orm(None):
        pytest.skip("the Redis broker keeps clusters' status in Redis")
    page = viewer.get(DASHBOARD).content.decode()
    # Django Q2 keeps it in Django's cache, here the test process's own.
    assert "<td>not known here: Django Q2 keeps their status" in page
    assert "1 task waiting" in page
    assert "qsignals-warning" not in page


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_call_run_by_the_worker_is_counted_on_the_dashboard(
    viewer: Client, connect: Connect[Any]
) -> None:
    @connect(post_save, sender=Article, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        if instance.title == "bad":
            raise ValueError("no")

    Article.objects.create(title="good")
    Article.objects.create(title="bad")
    for task in queued_tasks():
        with contextlib.suppress(ValueError):
            run_call(*task["args"])
    shown = line(viewer, path(reindex))
    assert (shown.runs, shown.failures) == (2, 1)
    assert shown.median != "-"
