"""Writing signed tasks to Django Q2's broker, several in one write.

The ORM broker gets one ``executemany`` INSERT in one transaction, Redis one
``RPUSH``, any other broker its own ``enqueue`` per task.

A network broker that fails costs a request at most about a second: Redis is
written to with short timeouts and no retries. One that refuses connections
fails at once and is tried again at the next write; one that took long to
fail (it does not answer) is not tried again for ``COOL_DOWN`` seconds, so
requests do not wait on it. The ORM broker is the project's own database,
which the request needs anyway: it is always tried.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.utils import timezone

if TYPE_CHECKING:
    from django_q.brokers import Broker

    from django_q_signals._payload import Call

logger = logging.getLogger("django_q_signals")

#: Seconds a network broker is left alone after a write that failed slowly.
COOL_DOWN = 10.0
#: A failed write that took this many seconds made the request wait.
SLOW = 0.25
#: Seconds to wait for Redis to connect, and to answer.
REDIS_TIMEOUT = 1.0


class BrokerUnavailable(ConnectionError):
    """A write was not tried: the broker failed a moment ago.

    Raised from ``save()`` for ``on_commit=False`` receivers while a broker
    that did not answer is left alone (10 seconds); a ``ConnectionError``.
    """


def destination(options: dict[str, Any]) -> Any:
    """Where tasks with these Django Q2 options go: a broker object of the
    project's (``q_options["broker"]``), a cluster's name, or None for the
    default cluster."""
    return options.get("broker") or options.get("cluster")


def queue_key(destination: Any) -> Any:
    """The queue of ``destination``: its cluster's name, or the broker object."""
    from django_q.conf import Conf

    if isinstance(destination, str) or destination is None:
        return destination or Conf.CLUSTER_NAME
    return destination


def is_orm(destination: Any) -> bool:
    """Whether tasks for ``destination`` go to Django Q2's ORM broker."""
    from django_q.conf import Conf

    named = isinstance(destination, str) or destination is None
    return (
        named and bool(Conf.ORM) and not (Conf.BROKER_CLASS or Conf.IRON_MQ or Conf.SQS)
    )


def write(destination: Any, packs: list[str], calls: list[Call]) -> None:
    """Put ``packs``, the tasks of ``calls``, on the broker for
    ``destination`` (see ``destination()``)."""
    key = queue_key(destination)
    if is_orm(destination):
        _write_orm(key, packs, calls)
        return
    failed_at = _failed_at.get(key)
    if failed_at is not None and time.monotonic() - failed_at < COOL_DOWN:
        raise BrokerUnavailable(
            f"Django Q2's broker {key!r} did not answer "
            f"{time.monotonic() - failed_at:.1f} s ago; it is tried again "
            f"{COOL_DOWN:.0f} s after that"
        )
    started = time.monotonic()
    try:
        if isinstance(key, str):
            _write_broker(key, packs)
        else:
            for pack in packs:
                key.enqueue(pack)
    except Exception:
        if time.monotonic() - started >= SLOW:
            _failed_at[key] = time.monotonic()
        raise
    _failed_at.pop(key, None)


#: When a broker (by queue name, or the object given in q_options) last
#: failed slowly.
_failed_at: dict[Any, float] = {}


def _write_orm(key: str, packs: list[str], calls: list[Call]) -> None:
    # Written directly rather than through the ORM broker, which closes idle
    # connections (and with them other aliases' open transactions) each time
    # it is created or enqueues.
    from django_q.conf import Conf

    committed = any(not _in_transaction(call.alias) for call in calls)
    broker_db = transaction.get_connection(Conf.ORM)
    if not (committed and broker_db.in_atomic_block):
        _insert_orm_tasks(Conf.ORM, key, packs)
    elif broker_db.vendor != "sqlite":
        # These calls' transaction has committed, but one is open on the
        # broker's database: its rollback must not take them back.
        with _separate_connection(Conf.ORM):
            _insert_orm_tasks(Conf.ORM, key, packs)
    else:
        # SQLite has one writer at a time: a second connection would wait
        # for the open transaction, so the calls join it.
        logger.warning(
            "Queued %s inside the open transaction on %r (the ORM broker's "
            "SQLite database): they are lost if it rolls back.",
            ", ".join(map(str, calls)),
            Conf.ORM,
        )
        _insert_orm_tasks(Conf.ORM, key, packs)


def _insert_orm_tasks(alias: str, key: str, packs: list[str]) -> None:
    """Rows of Django Q2's ORM broker queue, as its ``enqueue`` writes them:
    one INSERT run for all of them, without building a model instance each.

    In autocommit, one transaction for all of them (not a commit per row); in
    an open transaction, a savepoint in it, which adds no commit and takes
    back nothing the caller had not already put in that transaction. Either
    way a failure leaves none of them written.
    """
    from django_q.models import OrmQ

    connection = connections[alias]
    quote = connection.ops.quote_name
    fields = [OrmQ._meta.get_field(name) for name in ("key", "payload", "lock")]
    sql = (
        f"INSERT INTO {quote(OrmQ._meta.db_table)} "
        f"({', '.join(quote(str(field.column)) for field in fields)}) "
        "VALUES (%s, %s, %s)"
    )
    key_value, lock = (
        field.get_db_prep_save(value, connection)
        for field, value in ((fields[0], key), (fields[2], timezone.now()))
    )
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.executemany(sql, [(key_value, pack, lock) for pack in packs])


def _in_transaction(alias: str) -> bool:
    return bool(transaction.get_connection(alias).in_atomic_block)


@contextmanager
def _separate_connection(alias: str) -> Iterator[None]:
    """Point ``alias`` at a new connection, in autocommit, for this block."""
    original = connections[alias]
    separate = connections.create_connection(alias)
    connections[alias] = separate
    try:
        yield
    finally:
        connections[alias] = original
        separate.close()


def _write_broker(key: str, packs: list[str]) -> None:
    broker = get_broker(key)
    redis_broker = sys.modules.get("django_q.brokers.redis_broker")
    if redis_broker is not None and isinstance(broker, redis_broker.Redis):
        broker.connection.rpush(broker.list_key, *packs)
    else:
        for pack in packs:
            broker.enqueue(pack)


_brokers: dict[str, Broker] = {}


def get_broker(key: str) -> Broker:
    """A broker per queue, kept: creating one opens a new connection pool."""
    broker = _brokers.get(key)
    if broker is None:
        from django_q import brokers

        broker = brokers.get_broker(key)
        redis_broker = sys.modules.get("django_q.brokers.redis_broker")
        if redis_broker is not None and isinstance(broker, redis_broker.Redis):
            broker.connection = _redis_connection(broker.connection)
        _brokers[key] = broker
    return broker


def _redis_connection(default: Any) -> Any:
    """A Redis client for Django Q2's settings that gives up within a second.

    redis-py retries a refused connection with backoff, which holds a request
    for several seconds. Timeouts and retries set in ``Q_CLUSTER["redis"]``
    are kept; a ``django_redis`` connection is used as it is.
    """
    import redis
    from django_q.conf import Conf
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    bounded = {
        "socket_connect_timeout": REDIS_TIMEOUT,
        "socket_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    if Conf.DJANGO_REDIS and "django_redis" in sys.modules:
        return default
    if isinstance(Conf.REDIS, str):
        # Options in the URL's query string win over these.
        return redis.from_url(Conf.REDIS, **bounded)
    return redis.Redis(**{**bounded, **Conf.REDIS})
