"""What ``--stats`` says of Django Q2 itself: the tasks waiting on each queue
the receivers send to, and the clusters running, with a warning when tasks
wait and no cluster runs them."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from django_q_signals import _brokers
from django_q_signals._registry import Receiver

logger = logging.getLogger("django_q_signals")


class Queue(NamedTuple):
    """One queue the receivers send to, and its tasks not taken yet (None:
    the broker did not say)."""

    name: str
    waiting: int | None


def queues(receivers: list[Receiver]) -> list[Queue]:
    """The queues ``receivers`` send their tasks to, each once."""
    found: dict[str, Queue] = {}
    for receiver in receivers:
        destination = _brokers.destination(receiver.task_options())
        name = _queue_name(destination)
        if name not in found:
            found[name] = Queue(name, _waiting(destination))
    return sorted(found.values())


def _queue_name(destination: Any) -> str:
    key = _brokers.queue_key(destination)
    return repr(key) if isinstance(key, str) else type(key).__name__


def _waiting(destination: Any) -> int | None:
    try:
        if isinstance(destination, (str, type(None))):
            broker = _brokers.get_broker(_brokers.queue_key(destination))
        else:  # A broker object of the project's.
            broker = destination
        return int(broker.queue_size())
    except Exception:
        logger.warning(
            "--stats: could not ask the broker how full it is", exc_info=True
        )
        return None


def clusters() -> list[str] | None:
    """The clusters running, as ``host:pid (N workers, status)``; None where
    this process cannot see them: Django Q2 keeps their status in Redis for
    its Redis broker, and otherwise in Django's cache, which a per-process
    cache (``LocMemCache``, ``DummyCache``) does not share."""
    from django.core.cache import InvalidCacheBackendError, caches
    from django.core.cache.backends.dummy import DummyCache
    from django.core.cache.backends.locmem import LocMemCache
    from django_q.brokers import Broker
    from django_q.conf import Conf
    from django_q.status import Stat

    broker = _brokers.get_broker(_brokers.queue_key(None))
    if type(broker).get_stats is Broker.get_stats:  # Kept in Django's cache.
        try:
            cache = caches[Conf.CACHE]
        except InvalidCacheBackendError:
            return None
        if isinstance(cache, (LocMemCache, DummyCache)):
            return None
    try:
        stats = Stat.get_all(broker=broker)
    except Exception:
        logger.warning("Could not read the clusters' status", exc_info=True)
        raise ClustersUnreadable from None
    return sorted(
        f"{stat.host}:{stat.pid} ({len(stat.workers)} workers, {stat.status})"
        for stat in stats
    )


class ClustersUnreadable(Exception):
    """Where Django Q2 keeps its clusters' status could not be read (a
    broker or cache down): logged with its cause."""


#: What is said of the clusters where ``clusters()`` cannot see them.
CLUSTERS_NOT_KNOWN = (
    "not known here: Django Q2 keeps their status in Django's cache, "
    "and this process's cache is its own (use a shared cache to see them)"
)
#: What is said of them where reading their status failed.
CLUSTERS_UNREADABLE = (
    "not known: their status could not be read (the broker or cache did not "
    "answer; the log has the error)"
)


class Overview(NamedTuple):
    """The queues the receivers send to, the clusters running (None: not
    known here), and a warning if tasks wait while no cluster runs them."""

    queues: list[Queue]
    clusters: list[str] | None
    #: Why the clusters are not known, where they are not.
    not_known: str = CLUSTERS_NOT_KNOWN

    @property
    def warning(self) -> str | None:
        waiting = sum(queue.waiting or 0 for queue in self.queues)
        if waiting and self.clusters == []:
            return (
                f"{waiting} tasks wait on the broker and no qcluster runs them: "
                "start one with `python manage.py qcluster`."
            )
        return None


def overview(receivers: list[Receiver]) -> Overview:
    """What Django Q2 says of the queues ``receivers`` send to, and of its
    clusters."""
    found = queues(receivers)
    try:
        return Overview(found, clusters())
    except ClustersUnreadable:
        return Overview(found, None, CLUSTERS_UNREADABLE)


def lines(receivers: list[Receiver]) -> tuple[list[tuple[str, str]], str | None]:
    """The ``label: value`` lines of the Django Q2 block, and a warning if
    tasks wait while no cluster runs."""
    seen = overview(receivers)
    said = [
        (
            f"queue {queue.name}",
            "not known" if queue.waiting is None else f"{queue.waiting} tasks waiting",
        )
        for queue in seen.queues
    ]
    if seen.clusters is None:
        said.append(("clusters", seen.not_known))
    else:
        running = ", ".join(seen.clusters) if seen.clusters else "none running"
        said.append(("clusters", running))
    return said, seen.warning
