import uuid

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)


class Tag(models.Model):
    name = models.CharField(max_length=100)


class Article(models.Model):
    title = models.CharField(max_length=100)
    author = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL)
    tags = models.ManyToManyField(Tag)


class Comment(models.Model):
    """Deleted with its article (a cascade)."""

    article = models.ForeignKey(Article, on_delete=models.CASCADE)
    text = models.CharField(max_length=100)


class PublishedManager(models.Manager["Hideable"]):
    def get_queryset(self) -> "models.QuerySet[Hideable]":
        return super().get_queryset().filter(hidden=False)


class Hideable(models.Model):
    """Its default manager hides rows: reloads must not use it."""

    hidden = models.BooleanField(default=False)

    objects = PublishedManager()


class Token(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    label = models.CharField(max_length=100)


class Membership(models.Model):
    pk = models.CompositePrimaryKey("team", "person")
    team = models.CharField(max_length=50)
    person = models.CharField(max_length=50)
    role = models.CharField(max_length=50)


class Note(models.Model):
    """Only the handlers in tests/handlers.py listen to it."""

    title = models.CharField(max_length=100)


class Shelf(models.Model):
    """Only the m2m_changed handler in tests/handlers.py listens to it."""

    owner = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL)
    notes = models.ManyToManyField(Note)


class Reader(models.Model):
    """Borrows notes through an explicit through model."""

    name = models.CharField(max_length=100)
    notes = models.ManyToManyField(Note, through="Loan")


class Loan(models.Model):
    reader = models.ForeignKey(Reader, on_delete=models.CASCADE)
    note = models.ForeignKey(Note, on_delete=models.CASCADE)


class Bookmark(models.Model):
    """Points at a row of any model."""

    # No constraint: the tests app is created before contenttypes' tables.
    content_type = models.ForeignKey(
        ContentType, on_delete=models.CASCADE, db_constraint=False
    )
    object_id = models.PositiveIntegerField()
    target = GenericForeignKey("content_type", "object_id")


class Seen(models.Model):
    """What a handler running in a worker process saw, one row per call."""

    handler = models.CharField(max_length=200)
    note_pk = models.IntegerField(null=True)
    title = models.CharField(max_length=100, null=True)
    created = models.BooleanField(null=True)


class Ledger(models.Model):
    """Routed to the "other" database (tests.routers)."""

    entry = models.CharField(max_length=100)


class Draft(models.Model):
    """Written by the race tests, in slow transactions."""

    title = models.CharField(max_length=100)


class Bulk(models.Model):
    """Saved in bulk by the batching worker test."""

    title = models.CharField(max_length=100)


# The reliability suite (tests/reliability).


class Parcel(models.Model):
    """Load test: its signals go to unbatched receivers."""

    title = models.CharField(max_length=100)
    tags = models.ManyToManyField(Tag, related_name="+")


class Crate(models.Model):
    """Load test: its signals go to batched receivers."""

    title = models.CharField(max_length=100)
    tags = models.ManyToManyField(Tag, related_name="+")


class Chore(models.Model):
    """Fault tests: an unbatched receiver listens to it."""

    title = models.CharField(max_length=100)


class BatchedChore(models.Model):
    """Fault tests: a batched receiver listens to it."""

    title = models.CharField(max_length=100)


class Errand(models.Model):
    """Outbox tests: an unbatched outbox receiver listens to it."""

    title = models.CharField(max_length=100)
    tags = models.ManyToManyField(Tag, related_name="+")


class BatchedErrand(models.Model):
    """Outbox tests: a batched outbox receiver listens to it."""

    title = models.CharField(max_length=100)
    tags = models.ManyToManyField(Tag, related_name="+")


class Delivery(models.Model):
    """One row per handler call in a worker: the ledger the suite counts.

    Deliberately no unique constraint on ``(receiver, key)``: a duplicate
    delivery must be counted, not refused by the database.
    """

    receiver = models.CharField(max_length=50)
    key = models.CharField(max_length=100)
    # Which of the test's qcluster processes ran it (its QSIGNALS_CLUSTER).
    cluster = models.CharField(max_length=20, default="")
    # The PostgreSQL backend the handler's connection used.
    backend = models.IntegerField(null=True)


class Versioned(models.Model):
    """Per-row order tests: each commit bumps a row's ``version``."""

    version = models.IntegerField(default=0)

    class Meta:
        abstract = True


class Sheet(Versioned):
    """An ``ordered`` outbox receiver and the same one without ``ordered``
    listen to it."""


class Latest(Versioned):
    """A ``supersede`` outbox receiver and a ``supersede`` and ``ordered``
    one listen to it."""


class Blocked(Versioned):
    """An ``ordered`` outbox receiver with one retry, one of whose calls
    always fails."""


class Run(models.Model):
    """One run of a per-row order test's handler: what it read, and when.

    ``start`` and ``end`` are ``time.time()`` in the worker: every process
    of a test runs on one machine.
    """

    receiver = models.CharField(max_length=50)
    row = models.IntegerField()
    # The row's version the handler was given, as loaded by the worker.
    read = models.IntegerField()
    # The version the commit that wrote the call saved (0: the row's creation).
    written = models.IntegerField()
    cluster = models.CharField(max_length=20, default="")
    start = models.FloatField()
    # None: the run never ended (its process was killed).
    end = models.FloatField(null=True)


class ProxyArticle(Article):
    class Meta:
        proxy = True


class Feature(Article):
    """A multi-table inheritance child: its fields span two tables."""

    headline = models.CharField(max_length=100)


class Page(models.Model):
    """Its pk, a URL, can be longer than the outbox's object_pk column."""

    # At most 3,072 bytes in utf8mb4: what MySQL can index.
    url = models.CharField(max_length=700, primary_key=True)
    title = models.CharField(max_length=100)


class Slug(models.Model):
    code = models.CharField(max_length=50, primary_key=True)
    title = models.CharField(max_length=100)


class Price(models.Model):
    """A pk the database keeps to two places: 1.5 comes back as 1.50."""

    amount = models.DecimalField(primary_key=True, max_digits=8, decimal_places=2)
    label = models.CharField(max_length=100, default="")


class Issue(models.Model):
    """Receivers with when= and previous=: a stage that moves, a flag set once."""

    title = models.CharField(max_length=100)
    stage = models.CharField(max_length=20, default="new")
    alert_sent = models.BooleanField(default=False)
    assignee = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL)
    labels = models.JSONField(default=list)
