import uuid

from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)


class Tag(models.Model):
    name = models.CharField(max_length=100)


class Article(models.Model):
    title = models.CharField(max_length=100)
    author = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL)
    tags = models.ManyToManyField(Tag)


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
