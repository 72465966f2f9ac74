"""Signal handlers that run in a Django Q2 worker, not in the request.

Each one is connected with ``@async_receiver`` exactly where ``@receiver``
would go. When the signal fires, django-q-signals queues the call once the
transaction commits; a ``qcluster`` worker reloads the model instances and
calls the handler with the same keyword arguments Django would have passed.

The handlers print what they received (from the worker process, hence the
pid) and write a ``HandlerCall`` row so that ``demo.py`` can check they ran.
"""

import os
import time
from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save

from django_q_signals import async_receiver, progress
from shop.models import Article, HandlerCall, Report

SIGNAL_NAMES = {
    post_save: "post_save",
    post_delete: "post_delete",
    m2m_changed: "m2m_changed",
}


def describe(instance: Article | None, kwargs: dict[str, Any]) -> str:
    if instance is None:
        # The row was gone when the worker loaded it; its pk is still passed.
        return f"instance=None _instance_pk={kwargs['_instance_pk']}"
    return f"instance=<Article pk={instance.pk} title={instance.title!r}>"


def record(
    handler: str, signal: Any, instance: Article | None, text: str, **received: Any
) -> None:
    pid = os.getpid()
    print(f"[worker pid {pid}] {handler}: {SIGNAL_NAMES[signal]} {text}", flush=True)
    HandlerCall.objects.create(
        handler=handler,
        article_pk=instance.pk if instance is not None else received["_instance_pk"],
        received={"title": instance.title if instance else None, **received},
        worker_pid=pid,
    )


@async_receiver(post_save, sender=Article)
def article_saved(
    sender: type[Article],
    instance: Article | None,
    created: bool,
    update_fields: frozenset[str] | None,
    signal: Any,
    **kwargs: Any,
) -> None:
    fields = sorted(update_fields) if update_fields is not None else None
    record(
        "article_saved",
        signal,
        instance,
        f"sender={sender.__name__} created={created} update_fields={update_fields!r} "
        + describe(instance, kwargs),
        created=created,
        update_fields=fields,
        _instance_pk=kwargs.get("_instance_pk"),
    )


@async_receiver(m2m_changed, sender=Article.tags.through, prefetch_related=["tags"])
def article_tags_changed(
    sender: type,
    instance: Article | None,
    action: str,
    model: type,
    pk_set: set[int] | None,
    signal: Any,
    **kwargs: Any,
) -> None:
    text = f"action={action!r} model={model.__name__} pk_set={pk_set} " + describe(
        instance, kwargs
    )
    if instance is not None and action.startswith("post_"):
        # Loaded with prefetch_related=["tags"], so this is no extra query.
        text += f" -> tags now: {', '.join(tag.name for tag in instance.tags.all())}"
    record(
        "article_tags_changed",
        signal,
        instance,
        text,
        action=action,
        model=model._meta.label,
        pk_set=sorted(pk_set) if pk_set is not None else None,
        _instance_pk=kwargs.get("_instance_pk"),
    )


@async_receiver(post_delete, sender=Article)
def article_deleted(
    sender: type[Article], instance: Article | None, signal: Any, **kwargs: Any
) -> None:
    record(
        "article_deleted",
        signal,
        instance,
        f"sender={sender.__name__} " + describe(instance, kwargs),
        _instance_pk=kwargs.get("_instance_pk"),
    )


@async_receiver(post_save, sender=Report, outbox=True)
def render_report(
    instance: Report | None, created: bool, signal: Any, **kwargs: Any
) -> None:
    """Kept in the outbox until it has run; says how far it is, which the
    report's page shows ({% qsignals_status report %})."""
    if instance is None:
        return
    for page in range(1, instance.pages + 1):
        time.sleep(0.8)  # rendering a page
        progress(page, instance.pages, note="pages")
    record(
        "render_report",
        signal,
        None,
        f"rendered {instance.pages} pages of <Report pk={instance.pk}>",
        _instance_pk=None,
        report_pk=instance.pk,
    )
