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
