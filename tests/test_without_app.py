"""A project without "django_q_signals" in INSTALLED_APPS, as every 0.x
project is: everything but the outbox works, and the outbox is refused
before a call could be written or lost.

The whole core suite also runs under ``tests.settings_without_app`` (see
noxfile.py); these tests take the app away for a moment in the main pass.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models.signals import post_save
from django.test import modify_settings, override_settings

from django_q_signals import async_receiver
from tests.conftest import Connect, custom, queued_tasks, run_queued
from tests.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

without_the_app = modify_settings(INSTALLED_APPS={"remove": ["django_q_signals"]})


@without_the_app
def test_outbox_true_is_refused_at_decoration_naming_installed_apps() -> None:
    def handler(**kwargs: Any) -> None:
        pass

    with pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS"):
        async_receiver(custom, outbox=True)(handler)


@without_the_app
def test_the_outbox_setting_is_refused_in_the_signal_before_anything_is_written(
    connect: Connect[Any],
) -> None:
    runs: list[str] = []

    @connect(post_save, sender=Article)
    def handler(instance: Article, **kwargs: Any) -> None:
        runs.append(instance.title)

    with override_settings(Q_SIGNALS={"OUTBOX": True}):
        refused = pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS")
        with refused, transaction.atomic():
            Article.objects.create(title="refused")
        assert not Article.objects.exists()
        assert queued_tasks() == []
    # Without the setting, the same receiver queues at the commit.
    with transaction.atomic():
        Article.objects.create(title="queued")
    run_queued()
    assert runs == ["queued"]
