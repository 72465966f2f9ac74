"""One table per way of wiring the handler, so each has its own receiver."""

from django.db import models


class Item(models.Model):
    n = models.IntegerField()
    processed = models.BooleanField(default=False)

    class Meta:
        abstract = True


class FloorItem(Item):
    """No receiver at all: the floor."""


class InlineItem(Item):
    """A plain @receiver doing the work in the request, after the commit."""


class ManualItem(Item):
    """A plain @receiver calling async_task by hand."""


class DefaultItem(Item):
    """@async_receiver()."""


class BatchItem(Item):
    """@async_receiver(batch=True)."""


class CoalesceItem(Item):
    """@async_receiver(batch=True, coalesce=True), each row saved three times."""


class OutboxItem(Item):
    """@async_receiver(outbox=True)."""


class OutboxBatchItem(Item):
    """@async_receiver(outbox=True, batch=True)."""


class PreviousItem(Item):
    """@async_receiver(previous=["n"]): --previous compares it with DefaultItem."""


class OrderedItem(Item):
    """@async_receiver(outbox=True, ordered=True)."""


class SupersedeItem(Item):
    """@async_receiver(outbox=True, supersede=True)."""


class HotRow(models.Model):
    """One row committed again and again (--hot): how many times its handler
    ran, and the newest state a run read."""

    n = models.IntegerField()
    runs = models.IntegerField(default=0)
    seen = models.IntegerField(default=-1)

    class Meta:
        abstract = True


class HotItem(HotRow):
    """@async_receiver(outbox=True), a slow handler."""


class HotSupersedeItem(HotRow):
    """@async_receiver(outbox=True, supersede=True), a slow handler."""
