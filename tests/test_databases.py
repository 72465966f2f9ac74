"""Two databases and a router: each alias's transactions decide for its signals."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.signals import post_save, pre_save

from tests.conftest import (
    Connect,
    broker_is_orm_on,
    custom,
    queued_tasks,
    rolled_back,
    run_queued,
)
from tests.models import Article, Ledger, Token

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@pytest.fixture
def entries(connect: Connect[Any]) -> list[tuple[str | None, str, str | None]]:
    """``(entry, using, loaded from)`` for each Ledger save a handler saw."""
    received: list[tuple[str | None, str, str | None]] = []

    @connect(post_save, sender=Ledger)
    def handler(instance: Ledger | None, using: str, **kwargs: Any) -> None:
        received.append(
            (instance.entry, using, instance._state.db)
            if instance
            else (None, using, None)
        )

    return received


def test_a_write_on_the_routed_alias_is_queued_at_its_commit(
    entries: list[tuple[str | None, str, str | None]],
) -> None:
    with transaction.atomic(using="other"):
        Ledger.objects.create(entry="a")
        assert queued_tasks() == []
    run_queued()
    assert entries == [("a", "other", "other")]


@pytest.mark.usefixtures("entries")
def test_the_routed_alias_rollback_drops_its_calls() -> None:
    with rolled_back(using="other"):
        Ledger.objects.create(entry="a")
    assert queued_tasks() == []


def test_a_transaction_on_default_does_not_hold_back_other(
    entries: list[tuple[str | None, str, str | None]],
) -> None:
    with transaction.atomic():
        with transaction.atomic(using="other"):
            Ledger.objects.create(entry="a")
        # "other" has committed: its call is queued, whatever default does.
        assert len(queued_tasks()) == 1
    run_queued()
    assert entries == [("a", "other", "other")]


@pytest.mark.parametrize("broker", ["configured", "orm on default"])
def test_a_rollback_on_default_does_not_touch_other(
    entries: list[tuple[str | None, str, str | None]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    broker: str,
) -> None:
    from django_q.conf import Conf

    if broker == "orm on default":
        monkeypatch.setattr(Conf, "ORM", "default")
    with rolled_back(), transaction.atomic(using="other"):
        Ledger.objects.create(entry="kept")
    run_queued()
    if broker_is_orm_on("default") and connection.vendor == "sqlite":
        # The one case that cannot hold: SQLite's single writer. Said loudly.
        assert entries == []
        [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
        assert "lost if it rolls back" in warning.getMessage()
    else:
        assert entries == [("kept", "other", "other")]


def test_transactions_on_both_aliases_each_decide_for_their_own(
    connect: Connect[Any], entries: list[tuple[str | None, str, str | None]]
) -> None:
    articles: list[str] = []

    @connect(post_save, sender=Article)
    def handler(instance: Article, **kwargs: Any) -> None:
        articles.append(instance.title)

    with transaction.atomic(), transaction.atomic(using="other"):
        Article.objects.create(title="on default")
        Ledger.objects.create(entry="on other")
        with rolled_back(using="other"):
            Ledger.objects.create(entry="savepoint rolled back")
        with rolled_back():
            Article.objects.create(title="savepoint rolled back")
    run_queued()
    assert articles == ["on default"]
    assert entries == [("on other", "other", "other")]


def test_an_unsaved_instance_saved_to_another_database_arrives_as_it_was(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(pre_save, sender=Token)
    def handler(instance: Token, **kwargs: Any) -> None:
        received.append(instance.label)

    with transaction.atomic(using="other"):
        Token(label="on other").save(using="other")
    run_queued()

    assert received == ["on other"]


def test_a_using_that_is_not_a_database_follows_the_instance(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(custom)
    def handler(instance: Ledger, using: str, **kwargs: Any) -> None:
        received.append((instance.entry, instance._state.db, using))

    ledger = Ledger.objects.create(entry="a")
    run_queued()
    with transaction.atomic(using="other"):
        custom.send(sender=None, instance=ledger, using="sms")
        assert queued_tasks() == []
    run_queued()

    assert received == [("a", "other", "sms")]
