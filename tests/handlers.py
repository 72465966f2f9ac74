"""Handlers a real worker process runs in the worker tests.

Module level, so a worker finds them by importing this module.
"""

from typing import Any

from django.db.models.signals import m2m_changed, post_save
from django.dispatch import Signal

from django_q_signals import async_receiver
from tests.models import Bulk, Draft, Note, Seen, Shelf


@async_receiver(post_save, sender=Note)
def record_note(instance: Note | None, created: bool, **kwargs: Any) -> None:
    Seen.objects.create(
        handler="record_note",
        note_pk=instance.pk if instance else kwargs["_instance_pk"],
        title=instance.title if instance else None,
        created=created,
    )


@async_receiver(
    m2m_changed, sender=Shelf.notes.through, batch=True, select_related=["owner"]
)
def record_shelving(instance: Shelf | Note, action: str, **kwargs: Any) -> None:
    if action != "post_add":
        return
    owner = instance.owner if isinstance(instance, Shelf) else None
    Seen.objects.create(
        handler="record_shelving",
        title=f"{type(instance).__name__} {owner.name if owner else None}",
    )


# The race tests: the same check, queued at commit and at once.


def _check_draft(handler: str, instance: Draft | None, **kwargs: Any) -> None:
    Seen.objects.create(
        handler=handler,
        note_pk=instance.pk if instance else kwargs["_instance_pk"],
        title=instance.title if instance else None,
    )


@async_receiver(post_save, sender=Draft)
def check_draft(instance: Draft | None, **kwargs: Any) -> None:
    _check_draft("check_draft", instance, **kwargs)


@async_receiver(post_save, sender=Draft, on_commit=False)
def check_draft_eagerly(instance: Draft | None, **kwargs: Any) -> None:
    _check_draft("check_draft_eagerly", instance, **kwargs)


@async_receiver(post_save, sender=Bulk, batch=True)
def record_bulk(instance: Bulk, **kwargs: Any) -> None:
    if instance.title.startswith("fail"):
        raise ValueError(f"refused {instance.title}")
    Seen.objects.create(
        handler="record_bulk", note_pk=instance.pk, title=instance.title
    )


# The qsignals command's worker test: one handler that succeeds, one that fails.

stats_probe = Signal()


@async_receiver(stats_probe)
def probe_succeeds(**kwargs: Any) -> None:
    pass


@async_receiver(stats_probe)
def probe_fails(**kwargs: Any) -> None:
    raise RuntimeError("the probe failed, as it should")


# The test of tasks queued by 0.x: nothing sends this signal; the test puts
# 0.x's tasks for record_legacy (its record_legacy_task) on the broker.

legacy = Signal()


@async_receiver(legacy, sender=Note)
def record_legacy(sender: type[Note], instance: Note | None, **kwargs: Any) -> None:
    """A handler written for 0.x, as it was."""
    Seen.objects.create(
        handler="record_legacy",
        note_pk=instance.pk if instance else kwargs["_instance_pk"],
        title=f"{sender.__name__} {instance.title if instance else None} "
        f"{type(kwargs['update_fields']).__name__}",
        created=kwargs["created"],
    )
