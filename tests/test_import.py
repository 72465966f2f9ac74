"""Importing the package and decorating handlers needs no Django Q2, no settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_decorating_before_settings_are_configured() -> None:
    result = run_python(
        """
        import sys
        from django.dispatch import Signal
        from django_q_signals import async_receiver

        @async_receiver(Signal())
        def handler(**kwargs):
            pass

        print(sorted(m for m in sys.modules if m.split(".")[0] == "django_q"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_decorating_without_django_q_installed() -> None:
    result = run_python(
        """
        import sys
        import django
        from django.conf import settings

        settings.configure(INSTALLED_APPS=["django.contrib.contenttypes"])
        django.setup()
        from django.db.models.signals import post_save
        from django_q_signals import async_receiver

        @async_receiver(post_save, sender="contenttypes.ContentType")
        def handler(**kwargs):
            pass

        print(sorted(m for m in sys.modules if m.split(".")[0] == "django_q"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_project_without_django_q_commits_and_its_test_helpers_run_calls() -> None:
    result = run_python(
        """
        import django
        from django.conf import settings

        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                   "NAME": ":memory:"}},
        )
        django.setup()
        from django.core.management import call_command
        from django.db import transaction
        from django.db.models.signals import post_save
        from django_q_signals import async_receiver
        from django_q_signals.testing import capture_calls, run_immediately

        ran = []

        @async_receiver(post_save, sender="contenttypes.ContentType")
        def handler(instance, created, **kwargs):
            ran.append((instance.model, created))

        call_command("migrate", verbosity=0)
        from django.contrib.contenttypes.models import ContentType

        with capture_calls() as calls, transaction.atomic():
            ContentType.objects.create(app_label="shop", model="captured")
        with run_immediately(), transaction.atomic():
            ContentType.objects.create(app_label="shop", model="run")
        print(len(calls), ran)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 [('run', True)]"
