"""System checks, each id, and ``manage.py check`` as a whole."""

from __future__ import annotations

import sys
import types
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db.models.signals import m2m_changed, post_save
from django.test import override_settings

from django_q_signals import _registry, checks
from tests.conftest import Connect, custom, path
from tests.models import Article, Author, Bookmark, Loan

# Django 6.1's JSONField check, which manage.py check runs, asks each
# database what it supports.
needs_the_databases = pytest.mark.django_db(databases=["default", "other"])


def ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


@needs_the_databases
def test_manage_py_check_passes_on_a_working_project() -> None:
    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "System check identified no issues" in out.getvalue()


def test_e001_django_q_not_installed() -> None:
    apps = ["django.contrib.contenttypes", "django_q_signals", "tests"]
    with override_settings(INSTALLED_APPS=apps):
        messages = checks.check_django_q_installed()
    assert ids(messages) == ["django_q_signals.E001"]
    assert "INSTALLED_APPS" in messages[0].msg


def test_e001_silent_when_django_q_is_installed() -> None:
    assert checks.check_django_q_installed() == []


@pytest.mark.parametrize(
    ("q_cluster", "text"),
    [
        (None, "Q_CLUSTER is not set"),
        ("orm", "Q_CLUSTER must be a dict, not str"),
    ],
)
def test_e002_no_q_cluster(q_cluster: Any, text: str) -> None:
    with override_settings(Q_CLUSTER=q_cluster):
        messages = checks.check_q_cluster()
    assert ids(messages) == ["django_q_signals.E002"]
    assert text in messages[0].msg


def test_e004_the_orm_broker_names_no_database() -> None:
    with override_settings(Q_CLUSTER={"name": "x", "orm": "missing"}):
        messages = checks.check_q_cluster()
    assert ids(messages) == ["django_q_signals.E004"]
    assert "'missing', which is not in DATABASES" in messages[0].msg


def test_e002_silent_for_a_redis_broker() -> None:
    with override_settings(Q_CLUSTER={"name": "x", "redis": {"host": "localhost"}}):
        assert checks.check_q_cluster() == []


def test_e005_no_broker_and_no_redis_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes ``import redis`` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "redis", None)
    with override_settings(Q_CLUSTER={"name": "x"}):
        messages = checks.check_q_cluster()
    assert ids(messages) == ["django_q_signals.E005"]
    assert "the redis package is not installed" in messages[0].msg


def test_e005_silent_for_the_default_redis_broker_with_redis_installed() -> None:
    with override_settings(Q_CLUSTER={"name": "x"}):
        assert checks.check_q_cluster() == []


@needs_the_databases
@pytest.mark.outbox  # manage.py check runs the app's checks
def test_e003_bad_q_signals_settings() -> None:
    with override_settings(Q_SIGNALS={"BATCH_SIZE": 0, "ON_COMMIT": "no"}):
        messages = checks.check_settings()
    assert ids(messages) == ["django_q_signals.E003"] * 2
    assert [message.msg for message in messages] == [
        "settings.Q_SIGNALS['BATCH_SIZE'] must be a whole number of 1 or more, not 0.",
        "settings.Q_SIGNALS['ON_COMMIT'] must be True or False, not 'no'.",
    ]

    out = StringIO()
    with override_settings(Q_SIGNALS=[]), pytest.raises(SystemCheckError) as error:
        call_command("check", stdout=out, stderr=out)
    assert "django_q_signals.E003" in str(error.value)


def test_e003_silent_for_good_settings() -> None:
    q_signals = {"BATCH_SIZE": 100, "ON_COMMIT": False, "Q_OPTIONS": {"timeout": 5}}
    with override_settings(Q_SIGNALS=q_signals):
        assert checks.check_settings() == []


@pytest.mark.parametrize(("timeout", "retry"), [(60, 60), (90, 60), (60, None)])
def test_w002_retry_not_above_timeout(timeout: int, retry: int | None) -> None:
    q_cluster = {"name": "x", "orm": "default", "timeout": timeout}
    if retry is not None:
        q_cluster["retry"] = retry
    with override_settings(Q_CLUSTER=q_cluster):
        messages = checks.check_retry_above_timeout()
    assert ids(messages) == ["django_q_signals.W002"]
    assert messages[0].msg.startswith(
        f"Q_CLUSTER['retry'] ({retry or 60}) is not above Q_CLUSTER['timeout'] "
        f"({timeout}), so a broker that redelivers"
    )


def test_w002_a_receiver_timeout_not_below_retry(connect: Connect[Any]) -> None:
    @connect(custom, q_options={"timeout": 120})
    def handler(**kwargs: Any) -> None:
        pass

    messages = checks.check_retry_above_timeout()
    assert ids(messages) == ["django_q_signals.W002"]
    assert messages[0].obj is handler
    assert "have a timeout of 120 seconds, not below Q_CLUSTER['retry'] (60)" in (
        messages[0].msg
    )


def test_w002_a_default_timeout_from_the_settings(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    with override_settings(Q_SIGNALS={"Q_OPTIONS": {"timeout": 60}}):
        messages = checks.check_retry_above_timeout()
    # Every connected receiver gets the default, this one included.
    assert handler in [message.obj for message in messages]
    assert set(ids(messages)) == {"django_q_signals.W002"}


def test_w002_silent_when_retry_is_above_every_timeout(connect: Connect[Any]) -> None:
    @connect(custom, q_options={"timeout": 59})
    def handler(**kwargs: Any) -> None:
        pass

    assert checks.check_retry_above_timeout() == []
    with override_settings(Q_CLUSTER="orm"):
        assert checks.check_retry_above_timeout() == []


@needs_the_databases
@pytest.mark.outbox  # manage.py check runs the app's checks
def test_w001_handler_defined_in_a_function(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    messages = checks.check_receivers_importable()
    assert ids(messages) == ["django_q_signals.W001"]
    assert messages[0].obj is handler
    assert "inside a function" in messages[0].msg

    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "django_q_signals.W001" in out.getvalue()


def test_w001_handler_defined_in_main(connect: Connect[Any]) -> None:
    def handler(**kwargs: Any) -> None:
        pass

    handler.__module__ = "__main__"
    handler.__qualname__ = "handler"
    connect(custom)(handler)

    [message] = checks.check_receivers_importable()
    assert "__main__" in message.msg


@pytest.mark.parametrize(
    "module", ["no_such_module", "no_such_package.module", "built_at_run_time"]
)
def test_w001_handler_in_a_module_that_cannot_be_imported(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    # A module made at run time is in sys.modules, but has nothing to import.
    monkeypatch.setitem(
        sys.modules, "built_at_run_time", types.ModuleType("built_at_run_time")
    )

    def handler(**kwargs: Any) -> None:
        pass

    handler.__module__ = module
    handler.__qualname__ = "handler"
    connect(custom)(handler)

    [message] = checks.check_receivers_importable()
    assert message.msg == (
        f"The async receiver {module}.handler is defined in {module!r}, which "
        "cannot be imported by that name."
    )


def test_w001_silent_for_module_level_handlers() -> None:
    import tests.handlers  # noqa: F401

    assert checks.check_receivers_importable() == []


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"select_related": ["auther"]}, "tests.Article has no field 'auther'"),
        (
            {"select_related": ["tags"]},
            "tests.Article.tags is not a foreign key or one-to-one relation",
        ),
        (
            {"select_related": ["author__nope"]},
            "tests.Author has no field 'nope'",
        ),
        ({"prefetch_related": ["tagz"]}, "tests.Article has no relation 'tagz'"),
        ({"prefetch_related": ["title"]}, "tests.Article.title is not a relation"),
        (
            {"prefetch_related": ["author__articles"]},
            "tests.Author has no relation 'articles'",
        ),
    ],
)
def test_e006_a_lookup_that_does_not_exist(
    connect: Connect[Any], options: dict[str, list[str]], problem: str
) -> None:
    @connect(post_save, sender=Article, **options)
    def handler(**kwargs: Any) -> None:
        pass

    [message] = checks.check_relation_lookups()
    assert message.id == "django_q_signals.E006"
    assert message.obj is handler
    assert problem in message.msg


@pytest.mark.parametrize(
    ("sender", "options"),
    [
        (Article, {"select_related": ["author"], "prefetch_related": ["tags"]}),
        ("tests.Article", {"prefetch_related": ["author__article_set", "comment_set"]}),
        ("tests.Feature", {"select_related": ["article_ptr__author"]}),
        (Author, {"select_related": []}),
        # m2m_changed's sender is the through model: the lookups are the
        # declaring model's (Article's).
        (Article.tags.through, {"select_related": ["author"]}),
        # An explicit through model: the lookups are Reader's.
        (Loan, {"prefetch_related": ["notes"]}),
        # A generic foreign key: what lies beyond it varies by row.
        (Bookmark, {"prefetch_related": ["target__anything"]}),
    ],
)
def test_e006_silent_for_lookups_that_exist(
    connect: Connect[Any], sender: Any, options: dict[str, list[str]]
) -> None:
    signal = m2m_changed if sender in (Article.tags.through, Loan) else post_save

    @connect(signal, sender, **options)
    def handler(**kwargs: Any) -> None:
        pass

    assert checks.check_relation_lookups() == []


def test_e006_an_m2m_changed_sender_that_is_no_through_model_is_checked_itself(
    connect: Connect[Any],
) -> None:
    @connect(m2m_changed, Article, select_related=["auther"])
    def handler(**kwargs: Any) -> None:
        pass

    [message] = checks.check_relation_lookups()
    assert "tests.Article has no field 'auther'" in message.msg


def test_the_relations_of_a_lazy_sender_naming_no_model_are_not_checked() -> None:
    """Django's own check (signals.E001) reports the lazy reference."""
    receiver = _registry.Receiver(
        ids,
        "tests.test_checks.ids",
        (custom,),
        "tests.Nothing",
        dispatch_uid=None,
        select_related=("author",),
    )
    assert receiver.related_model is None


@needs_the_databases
@pytest.mark.outbox  # manage.py check runs the app's checks
@override_settings(Q_SIGNALS={"ON_COMIT": False})
def test_a_bad_setting_is_reported_once_by_check(
    connect: Connect[Any], caplog: pytest.LogCaptureFixture
) -> None:
    @connect(custom, q_options={"timeout": 5})
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(SystemCheckError, match="did you mean 'ON_COMMIT'"):
        call_command("check")
    assert [r for r in caplog.records if r.name == "django_q_signals"] == []


@pytest.mark.outbox
def test_e007_outbox_receivers_without_the_app(connect: Connect[Any]) -> None:
    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    apps = ["django.contrib.contenttypes", "django_q", "tests"]
    with override_settings(INSTALLED_APPS=apps):
        [message] = checks.check_outbox_installed()
    assert message.id == "django_q_signals.E007"
    assert path(handler) in message.msg


@override_settings(Q_SIGNALS={"OUTBOX": True})
def test_e007_the_outbox_setting_without_the_app(connect: Connect[Any]) -> None:
    @connect(custom)
    def handler(**kwargs: Any) -> None:
        pass

    apps = ["django.contrib.contenttypes", "django_q", "tests"]
    with override_settings(INSTALLED_APPS=apps):
        assert ids(checks.check_outbox_installed()) == ["django_q_signals.E007"]


@pytest.mark.outbox
def test_e007_silent_with_the_app_or_without_outbox_receivers(
    connect: Connect[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_registry", {})

    @connect(custom, outbox=True)
    def handler(**kwargs: Any) -> None:
        pass

    assert checks.check_outbox_installed() == []
    custom.disconnect(handler)
    apps = ["django.contrib.contenttypes", "django_q", "tests"]
    with override_settings(INSTALLED_APPS=apps):
        assert checks.check_outbox_installed() == []
