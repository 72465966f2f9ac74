"""Handlers a real worker process runs in the worker tests.

Module level, so a worker finds them by importing this module.
"""

from typing import Any

from django.db.models.signals import post_save

from django_q_signals import async_receiver
from tests.models import Note, Seen


@async_receiver(post_save, sender=Note)
def record_note(instance: Note | None, created: bool, **kwargs: Any) -> None:
    Seen.objects.create(
        handler="record_note",
        note_pk=instance.pk if instance else kwargs["_instance_pk"],
        title=instance.title if instance else None,
        created=created,
    )
