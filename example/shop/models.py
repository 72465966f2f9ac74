from django.db import models


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    def __str__(self) -> str:
        return self.name


class Article(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="articles")

    def __str__(self) -> str:
        return self.title


class HandlerCall(models.Model):
    """One handler call, written by the worker so the demo can check it ran."""

    handler = models.CharField(max_length=100)
    article_pk = models.BigIntegerField(null=True)
    #: What the handler received, in JSON-friendly form.
    received = models.JSONField(default=dict)
    worker_pid = models.IntegerField()
    ran_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.handler} for Article pk={self.article_pk}"


class Report(models.Model):
    """Rendered page by page in the worker, which says how far it is."""

    title = models.CharField(max_length=200)
    pages = models.PositiveIntegerField(default=4)

    def __str__(self) -> str:
        return self.title
