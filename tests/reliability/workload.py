"""The mixed workload the load and outbox runs send, and what they count."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

from django.db import transaction
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from tests.models import Delivery, Tag
from tests.reliability.handlers import signal_key


def send(
    receivers: dict[type[Model], str], items: int, tag: Tag, chunk: int = 25
) -> dict[str, list[str]]:
    """Create, update, tag, untag and delete ``items`` rows of each model in
    ``receivers``, ``chunk`` of each per transaction (every other chunk's
    updates in autocommit): 8 signals a row. The ledger keys sent, by the
    name of the receiver each model's signals go to."""
    expected: dict[str, list[str]] = {name: [] for name in receivers.values()}
    for start in range(0, items, chunk):
        with transaction.atomic():
            made: list[Any] = [
                model._default_manager.create(title=f"{model.__name__} {n}")
                for n in range(start, start + chunk)
                for model in receivers
            ]
        with transaction.atomic() if start // chunk % 2 else contextlib.nullcontext():
            for item in made:
                item.title += " (edited)"
                item.save(update_fields=["title"])
        with transaction.atomic():
            for item in made:
                item.tags.add(tag)
        for item in made:
            item.tags.remove(tag)
        with transaction.atomic():
            for item in made:
                expected[receivers[type(item)]] += expected_keys(item, tag)
                item.delete()
    return expected


def expected_keys(item: Model, tag: Tag) -> list[str]:
    """The ledger key of every signal the workload sends for ``item``."""
    pk = item.pk
    tags = {"pk_set": {tag.pk}}
    return [
        signal_key(post_save, item, created=True, update_fields=None),
        signal_key(post_save, item, created=False, update_fields={"title"}),
        *(
            signal_key(m2m_changed, item, action=action, **tags)
            for action in ("pre_add", "post_add", "pre_remove", "post_remove")
        ),
        signal_key(pre_delete, None, _instance_pk=pk),
        signal_key(post_delete, None, _instance_pk=pk),
    ]


def delivered() -> Counter[tuple[str, str]]:
    """How many times each (receiver, key) was handled."""
    return Counter(Delivery.objects.values_list("receiver", "key"))
