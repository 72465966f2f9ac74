"""progress(), ensure_idle(), wait(), await_idle() and the editing views'
mixin: what a page can know about a row's outbox calls."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import sync_to_async
from django import forms
from django.db import DatabaseError, connections, transaction
from django.db.models.signals import post_save
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.views.generic import UpdateView

from django_q_signals import (
    RowBusy,
    _progress,
    await_idle,
    ensure_idle,
    pending,
    progress,
    wait,
)
from django_q_signals._progress import flush
from django_q_signals.models import OutboxCall
from django_q_signals.views import IdleRowRequiredMixin
from tests.conftest import Connect, run_queued
from tests.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

State = OutboxCall.State


def recorded(call_id: int) -> tuple[Any, ...]:
    """What the call's row says of its progress, once the reports are written."""
    flush()
    call = OutboxCall.objects.get(pk=call_id)
    return call.progress_done, call.progress_total, call.progress_note, call.progress


def only_call() -> int:
    return OutboxCall.objects.get().pk


def test_progress_is_recorded_on_the_calls_row_while_the_handler_runs(
    connect: Connect[Any],
) -> None:
    seen: list[tuple[Any, ...]] = []

    @connect(post_save, sender=Article, outbox=True)
    def render(instance: Article, **kwargs: Any) -> None:
        call_id = only_call()
        progress(3, 10, "pages")
        seen.append(recorded(call_id))
        progress(5, 10, "pages")  # within a second: left out
        seen.append(recorded(call_id))
        progress(10, 10, "done")  # the end: always recorded
        seen.append(recorded(call_id))

    Article.objects.create(title="a")
    run_queued()
    assert seen == [
        (3.0, 10.0, "pages", "30% pages"),
        (3.0, 10.0, "pages", "30% pages"),
        (10.0, 10.0, "done", "100% done"),
    ]
    assert not OutboxCall.objects.exists()


def test_progress_is_kept_when_the_handlers_transaction_rolls_back(
    connect: Connect[Any],
) -> None:
    @connect(post_save, sender=Article, outbox=True)
    def render(instance: Article, **kwargs: Any) -> None:
        with transaction.atomic():
            progress(7)
            flush()
            raise ValueError("out of paper")

    Article.objects.create(title="a")
    with pytest.raises(ValueError, match="out of paper"):
        run_queued()
    call = OutboxCall.objects.get()
    assert (call.state, call.progress_done, call.progress_total) == (
        State.FAILED,
        7.0,
        None,
    )
    assert call.progress == "7"


def test_each_call_of_a_batch_reports_on_its_own_row(connect: Connect[Any]) -> None:
    seen: dict[str, tuple[Any, ...]] = {}

    @connect(post_save, sender=Article, outbox=True, batch=True)
    def render(instance: Article, **kwargs: Any) -> None:
        progress(len(instance.title), note=instance.title)
        [mine] = pending(instance)
        seen[instance.title] = recorded(mine.pk)[:3]

    with transaction.atomic():
        Article.objects.create(title="a")
        Article.objects.create(title="bb")
    run_queued()
    assert seen == {"a": (1.0, None, "a"), "bb": (2.0, None, "bb")}


def test_an_async_handler_reports_progress_too(connect: Connect[Any]) -> None:
    seen: list[tuple[Any, ...]] = []

    @connect(post_save, sender=Article, outbox=True)
    async def render(instance: Article, **kwargs: Any) -> None:
        progress(1, 4)
        call = await OutboxCall.objects.aget()
        seen.append(await sync_to_async(recorded)(call.pk))

    Article.objects.create(title="a")
    run_queued()
    assert seen == [(1.0, 4.0, "", "25%")]


def test_a_new_attempt_starts_without_the_last_ones_progress(
    connect: Connect[Any],
) -> None:
    attempts: list[tuple[Any, ...]] = []

    @connect(post_save, sender=Article, outbox=True, retries=1)
    def render(instance: Article, **kwargs: Any) -> None:
        attempts.append(recorded(only_call())[:2])
        progress(2, 3)
        flush()
        if len(attempts) == 1:
            raise ValueError("again")

    Article.objects.create(title="a")
    with pytest.raises(ValueError, match="again"):
        run_queued()
    OutboxCall.objects.update(state=State.SENT)
    from django_q_signals import _relay

    _relay.send_again(OutboxCall.objects.all())
    run_queued()
    assert attempts == [(None, None), (None, None)]


def test_a_progress_report_that_cannot_be_written_is_logged_and_the_handler_goes_on(
    connect: Connect[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def unreachable(*report: Any) -> None:
        raise DatabaseError("the database went away")

    @connect(post_save, sender=Article, outbox=True)
    def render(instance: Article, **kwargs: Any) -> None:
        progress(1, 2)
        flush()
        ran.append(instance.title)

    monkeypatch.setattr(_progress, "_write", unreachable)
    Article.objects.create(title="a")
    run_queued()
    assert ran == ["a"]
    assert "Could not record a handler's progress" in caplog.text
    assert not OutboxCall.objects.exists()


def test_flush_before_any_report_returns_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_progress, "_writers", {})
    flush()


def test_progress_elsewhere_does_nothing_and_bad_values_are_refused() -> None:
    progress(1, 2, "outside any handler")
    with pytest.raises(TypeError, match="done must be a number of 0 or more"):
        progress(-1)
    with pytest.raises(TypeError, match="total must be a number above 0 or None"):
        progress(1, 0)
    with pytest.raises(TypeError, match="note must be a string"):
        progress(1, note=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="done must be a number"):
        progress(True)


@pytest.fixture
def article(connect: Connect[Any]) -> Article:
    """A row whose post_save queued an outbox call of ``reindex``."""

    @connect(post_save, sender=Article, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        pass

    return Article.objects.create(title="a")


def test_ensure_idle_names_the_calls_still_to_run(article: Article) -> None:
    OutboxCall.objects.update(progress_done=2, progress_total=5, progress_note="pages")
    with pytest.raises(RowBusy) as busy:
        ensure_idle(article)
    assert (
        str(busy.value)
        == f"article {article.pk} is being processed: reindex (40% pages)"
    )
    assert [call.pk for call in busy.value.calls] == [only_call()]
    ensure_idle(article, handler="tests.elsewhere.other")
    run_queued()
    ensure_idle(article)


def test_ensure_idle_names_a_call_that_has_said_nothing_by_its_state(
    article: Article,
) -> None:
    with pytest.raises(RowBusy, match=r"reindex \(sent\)"):
        ensure_idle(article)


def run_later(seconds: float) -> threading.Thread:
    """Run the queued tasks in another thread after a while, as a worker."""

    def work() -> None:
        time.sleep(seconds)
        try:
            run_queued()
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_wait_returns_when_the_work_is_done_or_at_the_timeout(
    article: Article,
) -> None:
    started = time.monotonic()
    assert wait(article, timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    worker = run_later(0.3)
    assert wait(article, timeout=30) is True
    worker.join()
    assert wait(article, timeout=0) is True


def test_await_idle_waits_in_async_code(article: Article) -> None:
    async def waited(timeout: float) -> bool:
        try:
            return await await_idle(article, timeout=timeout)
        finally:
            # Its queries ran in asgiref's thread for sync code, as in a
            # view: the connection there is closed, as a request's would be.
            await sync_to_async(connections.close_all)()

    assert asyncio.run(waited(0.2)) is False
    worker = run_later(0.3)
    assert asyncio.run(waited(30)) is True
    worker.join()


if TYPE_CHECKING:
    ModelForm = forms.ModelForm[Article]
else:
    ModelForm = forms.ModelForm


class ArticleForm(ModelForm):
    class Meta:
        model = Article
        fields = ("title",)


if TYPE_CHECKING:
    ArticleUpdateView = UpdateView[Article, ArticleForm]
else:
    ArticleUpdateView = UpdateView


class EditArticle(IdleRowRequiredMixin, ArticleUpdateView):
    model = Article
    form_class = ArticleForm
    success_url = "/done/"

    def form_invalid(self, form: ArticleForm) -> HttpResponse:
        return HttpResponse(" ".join(map(str, form.non_field_errors())), status=409)


def edit(article: Article, title: str) -> HttpResponse:
    request: HttpRequest = RequestFactory().post("/", {"title": title})
    response = EditArticle.as_view()(request, pk=article.pk)
    assert isinstance(response, HttpResponse)
    return response


def test_an_edit_view_refuses_to_save_while_work_is_pending(article: Article) -> None:
    refused = edit(article, "changed")
    assert refused.status_code == 409
    assert refused.content.decode() == (
        f"article {article.pk} is being processed: reindex (sent)"
    )
    article.refresh_from_db()
    assert article.title == "a"
    run_queued()
    accepted = edit(article, "changed")
    assert (accepted.status_code, accepted["Location"]) == (302, "/done/")
    article.refresh_from_db()
    assert article.title == "changed"


def test_the_mixin_can_count_some_handlers_only(article: Article) -> None:
    EditArticle.idle_row_handlers = ["tests.elsewhere.other"]
    try:
        assert edit(article, "changed").status_code == 302
    finally:
        EditArticle.idle_row_handlers = None
