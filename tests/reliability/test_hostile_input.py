"""Hostile input: refused at decoration time, or a WARNING and a working save.

Fast and without a worker process (the round trip is the one a worker makes,
through ``run_queued``), so these run in ``nox -s tests`` too.
"""

from __future__ import annotations

import functools
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal

from django_q_signals import async_receiver, checks
from tests.conftest import Connect, custom, queued_tasks, run_queued
from tests.models import (
    Article,
    Feature,
    Hideable,
    Membership,
    ProxyArticle,
    Slug,
    Token,
)

pytestmark = pytest.mark.django_db(transaction=True)


FIXTURE = Path(__file__).parent / "fixtures" / "articles.json"


@pytest.fixture
def received(connect: Connect[Any]) -> list[dict[str, Any]]:
    """The kwargs of each ``custom`` signal the handler got, signal and sender aside."""
    calls: list[dict[str, Any]] = []

    @connect(custom)
    def handler(signal: Signal, sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    return calls


# Handlers a worker could not find again.


def module_handler(**kwargs: Any) -> None:
    pass


def test_a_lambda_is_refused() -> None:
    with pytest.raises(TypeError, match="lambda"):
        async_receiver(custom)(lambda **kwargs: None)


def test_a_partial_is_refused() -> None:
    with pytest.raises(TypeError, match=r"functools\.partial"):
        async_receiver(custom)(functools.partial(module_handler))


class Owner:
    def handle(self, **kwargs: Any) -> None:
        pass


def test_a_bound_method_is_refused() -> None:
    with pytest.raises(TypeError, match="bound method"):
        async_receiver(custom)(Owner().handle)


def test_a_nested_handler_runs_and_manage_py_check_warns(
    connect: Connect[Any],
) -> None:
    numbers = []

    @connect(custom)
    def handler(n: int, **kwargs: Any) -> None:
        numbers.append(n)

    custom.send(sender=None, n=1)
    run_queued()

    assert numbers == [1]
    [warning] = checks.check_receivers_importable()
    assert (warning.id, warning.obj) == ("django_q_signals.W001", handler)


def make_handler() -> Any:
    @async_receiver(custom)
    def handler(**kwargs: Any) -> None:
        pass

    return handler


def test_two_connected_handlers_with_one_name_are_refused() -> None:
    first = make_handler()
    try:
        with pytest.raises(ImproperlyConfigured, match="could not tell the two apart"):
            make_handler()
    finally:
        custom.disconnect(first)


# Arguments that cannot, or should not, travel as they are.


def test_unpicklable_kwarg_is_dropped_with_one_warning(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    received = []

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    custom.send(sender=None, lock=threading.Lock(), kept=1)
    custom.send(sender=None, lock=threading.Lock(), kept=2)
    run_queued()

    assert [sorted(k) for k in received] == [["kept", "sender", "signal"]] * 2
    assert [k["kept"] for k in received] == [1, 2]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "'lock'" in warnings[0].getMessage()
    assert "handler" in warnings[0].getMessage()


def test_queryset_arrives_as_none(connect: Connect[Any]) -> None:
    received = []

    @connect(post_delete, sender=Article)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs)

    Article.objects.create(title="x")
    Article.objects.all().delete()
    run_queued()

    assert "origin" in received[0]
    assert received[0]["origin"] is None


def test_a_10_mb_string_kwarg_arrives_whole(received: list[dict[str, Any]]) -> None:
    # Random hex: 10 MB that no compression along the way can shrink.
    text = secrets.token_hex(5_000_000)
    custom.send(sender=None, text=text)
    run_queued()

    assert len(received) == 1
    assert received[0]["text"] == text


def test_a_self_referencing_structure_arrives_with_its_cycles(
    received: list[dict[str, Any]],
) -> None:
    cycle: list[Any] = ["head"]
    cycle.append(cycle)
    tree: dict[str, Any] = {"name": "root", "children": []}
    tree["children"].append({"name": "leaf", "parent": tree})
    custom.send(sender=None, cycle=cycle, tree=tree)
    run_queued()

    got = received[0]
    assert got["cycle"][0] == "head"
    assert got["cycle"][1] is got["cycle"]
    assert got["tree"]["children"][0]["parent"] is got["tree"]


def test_a_structure_too_deep_to_pickle_is_dropped_with_a_warning(
    received: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        node.append([])
        node = node[0]
    custom.send(sender=None, deep=deep, kept=1)
    run_queued()

    assert received == [{"kept": 1}]
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "'deep' cannot be pickled (RecursionError" in warning.getMessage()


def test_unpicklable_sender_becomes_none_with_a_warning(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    received = []

    @connect(custom)
    def handler(sender: Any, **kwargs: Any) -> None:
        received.append((sender, kwargs["n"]))

    custom.send(sender=threading.Lock(), n=1)
    run_queued()

    assert received == [(None, 1)]
    assert "'sender'" in caplog.records[0].getMessage()


# Model kinds: each instance is reloaded as what it is.


def test_a_proxy_model_instance_arrives_as_the_proxy(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=ProxyArticle)
    def handler(sender: Any, instance: ProxyArticle, **kwargs: Any) -> None:
        received.append((sender, type(instance), instance.title))

    ProxyArticle.objects.create(title="through the proxy")
    Article.objects.create(title="not through the proxy")
    run_queued()

    assert received == [(ProxyArticle, ProxyArticle, "through the proxy")]


def test_a_multi_table_child_arrives_with_its_parent_fields(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(post_save, sender=Feature)
    def handler(instance: Feature, **kwargs: Any) -> None:
        fields = (instance.pk, instance.title, instance.headline)
        received.append((type(instance), *fields))

    feature = Feature.objects.create(title="in the parent", headline="in the child")
    Article.objects.filter(pk=feature.pk).update(title="parent changed")
    run_queued()

    assert received == [(Feature, feature.pk, "parent changed", "in the child")]


def test_reload_uses_the_base_manager(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Hideable)
    def handler(instance: Hideable, **kwargs: Any) -> None:
        received.append(instance)

    hidden = Hideable.objects.create(hidden=True)
    run_queued()

    assert received[0] is not None
    assert received[0].pk == hidden.pk


def test_composite_primary_key(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Membership)
    def handler(instance: Membership, **kwargs: Any) -> None:
        received.append(instance)

    Membership.objects.create(team="core", person="ada", role="lead")
    run_queued()

    assert received[0].pk == ("core", "ada")
    assert received[0].role == "lead"


def test_uuid_primary_key(connect: Connect[Any]) -> None:
    import uuid

    received = []

    @connect(post_save, sender=Token)
    def handler(instance: Token, **kwargs: Any) -> None:
        received.append(instance)

    token = Token.objects.create(label="key")
    run_queued()

    assert received[0].pk == token.pk
    assert isinstance(received[0].pk, uuid.UUID)


def test_a_string_primary_key_arrives_exactly(connect: Connect[Any]) -> None:
    received = []

    @connect(post_save, sender=Slug)
    def handler(instance: Slug, **kwargs: Any) -> None:
        received.append((instance.pk, instance.title))

    # Characters a key separator or a URL would mangle.
    code = "a/b c:d#é 1"
    Slug.objects.create(code=code, title="odd key")
    run_queued()

    assert received == [(code, "odd key")]


# Where and how the signal is sent.


def test_signals_sent_while_loading_a_fixture_arrive_with_raw_true(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(post_save, sender=Article)
    def handler(instance: Article, raw: bool, **kwargs: Any) -> None:
        assert instance.author is not None
        received.append((raw, instance.pk, instance.title, instance.author.name))

    call_command("loaddata", FIXTURE, verbosity=0)
    run_queued()

    assert received == [(True, 901, "From a fixture", "Ada")]


def test_a_signal_from_another_thread_is_queued_at_that_thread_commit(
    connect: Connect[Any],
) -> None:
    received = []

    @connect(post_save, sender=Article)
    def handler(instance: Article, **kwargs: Any) -> None:
        received.append(instance.title)

    saved, commit = threading.Event(), threading.Event()

    def request() -> None:
        try:
            with transaction.atomic():
                Article.objects.create(title="from a thread")
                saved.set()
                commit.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=request)
    thread.start()
    saved.wait(10)
    before_commit = queued_tasks()
    commit.set()
    thread.join()
    run_queued()

    assert before_commit == []
    assert received == ["from a thread"]


def test_signal_sent_with_asend_is_queued(connect: Connect[Any]) -> None:
    received = []

    @connect(custom)
    def handler(**kwargs: Any) -> None:
        received.append(kwargs["n"])

    async_to_sync(custom.asend)(sender=None, n=42)
    run_queued()

    assert received == [42]
