"""The same handler work, one UPDATE per signal, wired each way."""

import time
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.db.models.signals import post_save
from django.dispatch import receiver

from bench.models import (
    BatchItem,
    CoalesceItem,
    DefaultItem,
    HotItem,
    HotRow,
    HotSupersedeItem,
    InlineItem,
    ManualItem,
    OrderedItem,
    OutboxBatchItem,
    OutboxItem,
    PreviousItem,
    SupersedeItem,
)
from bench.modes import HOT_HANDLER_S
from django_q_signals import async_receiver


@receiver(post_save, sender=InlineItem)
def process_inline(instance: InlineItem, **kwargs: Any) -> None:
    # The work itself, in the request, once the transaction has committed.
    pk = instance.pk
    transaction.on_commit(
        lambda: InlineItem.objects.filter(pk=pk).update(processed=True)
    )


@receiver(post_save, sender=ManualItem)
def queue_by_hand(instance: ManualItem, created: bool, **kwargs: Any) -> None:
    from django_q.tasks import async_task

    # Queued once the transaction has committed, as Django's docs advise:
    # a task queued inside it could run before the row exists.
    transaction.on_commit(
        partial(async_task, "bench.handlers.process_by_hand", instance.pk, created)
    )


def process_by_hand(pk: int, created: bool) -> None:
    item = ManualItem.objects.get(pk=pk)
    ManualItem.objects.filter(pk=item.pk).update(processed=True)


@async_receiver(post_save, sender=DefaultItem)
def process(instance: DefaultItem, **kwargs: Any) -> None:
    DefaultItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=BatchItem, batch=True)
def process_in_batches(instance: BatchItem, **kwargs: Any) -> None:
    BatchItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=CoalesceItem, batch=True, coalesce=True)
def process_coalesced(instance: CoalesceItem, **kwargs: Any) -> None:
    CoalesceItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=OutboxItem, outbox=True)
def process_from_the_outbox(instance: OutboxItem, **kwargs: Any) -> None:
    OutboxItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=OutboxBatchItem, outbox=True, batch=True)
def process_batches_from_the_outbox(instance: OutboxBatchItem, **kwargs: Any) -> None:
    OutboxBatchItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=PreviousItem, previous=["n"])
def process_with_previous(instance: PreviousItem, **kwargs: Any) -> None:
    PreviousItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=OrderedItem, outbox=True, ordered=True)
def process_in_order(instance: OrderedItem, **kwargs: Any) -> None:
    OrderedItem.objects.filter(pk=instance.pk).update(processed=True)


@async_receiver(post_save, sender=SupersedeItem, outbox=True, supersede=True)
def process_the_latest(instance: SupersedeItem, **kwargs: Any) -> None:
    SupersedeItem.objects.filter(pk=instance.pk).update(processed=True)


def slow_work(instance: HotRow) -> None:
    """A handler's slow work on a hot row, then a note that it ran and which
    state it read (the worker loads the row as it is when the call runs)."""
    time.sleep(HOT_HANDLER_S)
    type(instance)._default_manager.filter(pk=instance.pk).update(
        runs=F("runs") + 1, seen=Greatest("seen", Value(instance.n))
    )


@async_receiver(post_save, sender=HotItem, outbox=True)
def process_every_state(instance: HotItem, **kwargs: Any) -> None:
    slow_work(instance)


@async_receiver(post_save, sender=HotSupersedeItem, outbox=True, supersede=True)
def process_the_latest_state(instance: HotSupersedeItem, **kwargs: Any) -> None:
    slow_work(instance)
