"""Schedule the outbox relay on Django Q2: every qcluster then runs it."""

from typing import Any

from django.db import migrations, router
from django.utils import timezone

NAME = "django_q_signals: outbox relay"


def schedule_relay(apps: Any, schema_editor: Any) -> None:
    Schedule = apps.get_model("django_q", "Schedule")
    alias = schema_editor.connection.alias
    if not router.allow_migrate_model(alias, Schedule):
        return
    Schedule.objects.using(alias).get_or_create(
        name=NAME,
        defaults={
            "func": "django_q_signals.worker.relay",
            # The relay's runs are not saved as task results (its failures are).
            "kwargs": "q_options={'save': False}",
            "schedule_type": "I",  # every `minutes`
            "minutes": 1,
            "repeats": -1,
            "next_run": timezone.now(),
        },
    )


def unschedule_relay(apps: Any, schema_editor: Any) -> None:
    Schedule = apps.get_model("django_q", "Schedule")
    alias = schema_editor.connection.alias
    if router.allow_migrate_model(alias, Schedule):
        Schedule.objects.using(alias).filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("django_q_signals", "0001_initial"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(schedule_relay, unschedule_relay)]
