"""The status fragment: the view in django_q_signals.urls, the
{% qsignals_status %} tag, and who may see them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_save
from django.http import HttpRequest
from django.template import Context, Template
from django.test import Client, RequestFactory, override_settings

from django_q_signals import _fragment
from django_q_signals.models import OutboxCall
from tests.conftest import Connect, run_queued
from tests.models import Article, Ledger

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@pytest.fixture
def article(connect: Connect[Any]) -> Article:
    """A row whose post_save queued an outbox call of ``reindex``."""

    @connect(post_save, sender=Article, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        pass

    return Article.objects.create(title="a")


def user(name: str, *, staff: bool = False, permission: bool = False) -> User:
    made = User.objects.create_user(name, is_staff=staff)
    if permission:
        made.user_permissions.add(
            Permission.objects.get(
                content_type__app_label="django_q_signals", codename="view_outboxcall"
            )
        )
    return made


def client_of(who: User | None) -> Client:
    client = Client()
    if who is not None:
        client.force_login(who)
    return client


@pytest.fixture
def staff() -> Client:
    """A staff user with the permission to view outbox calls."""
    return client_of(user("staff", staff=True, permission=True))


def status_url(label: str, pk: object) -> str:
    return f"/qsignals/{label}/{pk}/"


def test_staff_with_the_view_permission_see_the_rows_calls_polling(
    article: Article, staff: Client
) -> None:
    OutboxCall.objects.update(progress_done=2, progress_total=5, progress_note="pages")
    url = status_url("tests.article", article.pk)
    response = staff.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert f'hx-get="{url}" hx-trigger="every 2s" hx-swap="outerHTML"' in html
    assert '<span class="qsignals-handler">reindex</span>' in html
    assert '<span class="qsignals-state">sent</span>' in html
    assert '<progress max="100" value="40">40%</progress>' in html
    assert '<span class="qsignals-progress">40% pages</span>' in html
    assert '<span class="qsignals-age">0 s</span>' in html
    assert "no-cache" in response["Cache-Control"]


def test_a_count_without_a_total_shows_no_bar(article: Article, staff: Client) -> None:
    OutboxCall.objects.update(progress_done=7)
    html = staff.get(status_url("tests.article", article.pk)).content.decode()
    assert '<span class="qsignals-progress">7</span>' in html
    assert "<progress" not in html


def test_when_no_call_is_left_the_fragment_stops_polling(
    article: Article, staff: Client
) -> None:
    run_queued()
    response = staff.get(status_url("tests.article", article.pk))
    assert response.status_code == 200
    assert (
        response.content.decode()
        == '<div class="qsignals-status qsignals-idle"></div>\n'
    )


def test_another_rows_fragment_shows_only_its_own_calls(
    article: Article, staff: Client
) -> None:
    run_queued()
    Article.objects.create(title="b")
    html = staff.get(status_url("tests.article", article.pk)).content.decode()
    assert "hx-get" not in html
    assert "reindex" not in html


@pytest.mark.parametrize(
    "who",
    ["anonymous", "user", "user with the permission", "staff without the permission"],
)
@pytest.mark.parametrize(
    "address",
    ["the row", "a row that does not exist", "an unknown model"],
)
def test_users_refused_get_403_and_learn_nothing_of_the_row(
    article: Article, who: str, address: str
) -> None:
    client = client_of(
        {
            "anonymous": None,
            "user": user("user"),
            "user with the permission": user("viewer", permission=True),
            "staff without the permission": user("clerk", staff=True),
        }[who]
    )
    url = {
        "the row": status_url("tests.article", article.pk),
        "a row that does not exist": status_url("tests.article", article.pk + 1),
        "an unknown model": status_url("tests.nothing", 1),
    }[address]
    response = client.get(url)
    assert response.status_code == 403
    assert b"reindex" not in response.content


@pytest.mark.parametrize(
    "url",
    [
        status_url("tests.article", 10**9),
        status_url("tests.article", "abc"),
        status_url("tests.nothing", 1),
        status_url("article", 1),
        status_url("tests.article", 1) + "?using=nowhere",
    ],
)
def test_allowed_users_get_404_for_rows_that_do_not_exist(
    article: Article, staff: Client, url: str
) -> None:
    assert staff.get(url).status_code == 404


def test_the_view_answers_get_only(article: Article, staff: Client) -> None:
    assert staff.post(status_url("tests.article", article.pk)).status_code == 405


def test_a_superuser_sees_the_fragment(article: Article) -> None:
    admin = User.objects.create_superuser("admin")
    response = client_of(admin).get(status_url("tests.article", article.pk))
    assert b"reindex" in response.content


def test_a_row_on_another_database_is_found_there(
    connect: Connect[Any], staff: Client
) -> None:
    @connect(post_save, sender=Ledger, outbox=True)
    def book(instance: Ledger, **kwargs: Any) -> None:
        pass

    @connect(post_save, sender=Article, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        pass

    ledger = Ledger.objects.create(entry="a")  # routed to "other"
    moved = Article.objects.using("other").create(title="on other")
    assert _fragment.url(ledger) == status_url("tests.ledger", ledger.pk)
    assert _fragment.url(moved) == status_url("tests.article", moved.pk) + (
        "?using=other"
    )
    assert b">book<" in staff.get(_fragment.url(ledger)).content
    assert b">reindex<" in staff.get(_fragment.url(moved)).content
    # Not on the default database, where no such row is.
    assert staff.get(status_url("tests.article", moved.pk)).status_code == 404


def allowed_unless_secret(request: HttpRequest, instance: Article | None) -> bool:
    """Any logged-in user, for any article but the secret one."""
    if not request.user.is_authenticated:
        return False
    return instance is None or instance.title != "secret"


@pytest.mark.parametrize(
    "check", ["tests.test_status_fragment.allowed_unless_secret", allowed_unless_secret]
)
def test_the_status_permission_setting_decides_who_sees_which_row(
    article: Article, check: object
) -> None:
    secret = Article.objects.create(title="secret")
    client = client_of(user("user"))
    with override_settings(Q_SIGNALS={"STATUS_PERMISSION": check}):
        assert client.get(status_url("tests.article", article.pk)).status_code == 200
        assert client.get(status_url("tests.article", secret.pk)).status_code == 403
        missing = secret.pk + 1  # the newest row's pk, and one
        assert client.get(status_url("tests.article", missing)).status_code == 404
        assert Client().get(status_url("tests.article", missing)).status_code == 403


def render_tag(instance: Article, who: Any) -> str:
    request = RequestFactory().get("/articles/")
    request.user = who
    template = Template("{% load qsignals %}{% qsignals_status article %}")
    return template.render(Context({"request": request, "article": instance}))


def test_the_tag_renders_what_the_view_does(article: Article) -> None:
    staff_user = user("staff", staff=True, permission=True)
    from_view = client_of(staff_user).get(status_url("tests.article", article.pk))
    assert render_tag(article, staff_user) == from_view.content.decode()


@pytest.mark.parametrize("who", ["anonymous", "staff without the permission"])
def test_the_tag_renders_nothing_for_users_refused(article: Article, who: str) -> None:
    refused = AnonymousUser() if who == "anonymous" else user("clerk", staff=True)
    assert render_tag(article, refused) == ""


def test_the_tag_needs_the_request_in_the_context(article: Article) -> None:
    template = Template("{% load qsignals %}{% qsignals_status article %}")
    with pytest.raises(
        ImproperlyConfigured, match=r"django\.template\.context_processors\.request"
    ):
        template.render(Context({"article": article}))


def test_a_page_shows_the_fragment_with_the_request_context_processor(
    article: Article, staff: Client
) -> None:
    html = staff.get(f"/articles/{article.pk}/").content.decode()
    assert f'hx-get="{status_url("tests.article", article.pk)}"' in html


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"), (7380, "2 h 3 min")],
)
def test_ages_are_shown_in_the_unit_that_reads_best(seconds: int, shown: str) -> None:
    assert _fragment.age(timedelta(seconds=seconds)) == shown
