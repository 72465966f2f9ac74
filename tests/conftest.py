from __future__ import annotations

import contextlib
import os
import pydoc
import signal as signals
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import connections, transaction
from django.dispatch import Signal

from django_q_signals import _brokers, async_receiver

# Without the app (tests.settings_without_app), the modules whose imports
# need its outbox model or connect outbox receivers are not collected.
collect_ignore = (
    []
    if "django_q_signals" in settings.INSTALLED_APPS
    else [
        "reliability",
        "test_command.py",
        "test_dashboard.py",
        "test_dashboard_browser.py",
        "test_history.py",
        "test_outbox.py",
        "test_outbox_admin.py",
        "test_outbox_browser.py",
        "test_ordered.py",
        "test_status.py",
        "test_status_browser.py",
        "test_status_fragment.py",
        "test_supersede.py",
    ]
)

F = TypeVar("F", bound=Callable[..., Any])
Connect = Callable[..., Callable[[F], F]]


@pytest.fixture
def connect() -> Iterator[Connect[Any]]:
    """``async_receiver`` for one test: its handlers are disconnected after it."""
    connected: list[tuple[Any, Any, Callable[..., Any], Any]] = []

    def connect(signal: Signal | list[Signal], sender: Any = None, **options: Any):  # type: ignore[no-untyped-def]
        def decorator(func: F) -> F:
            async_receiver(signal, sender, **options)(func)
            connected.append((signal, sender, func, options.get("dispatch_uid")))
            return func

        return decorator

    yield connect
    for signal, sender, func, uid in connected:
        for each in signal if isinstance(signal, list) else [signal]:
            each.disconnect(func, sender=sender, dispatch_uid=uid)


def path(func: Callable[..., Any]) -> str:
    """A handler's dotted path: its receiver's name, task name and group."""
    return f"{func.__module__}.{func.__qualname__}"


#: A signal of the tests' own; ``numbers`` records its ``n`` kwarg.
custom = Signal()


class TwoArguments(Exception):
    """Pickles, but cannot be unpickled: it is rebuilt with one argument."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")


@pytest.fixture
def numbers(connect: Connect[Any]) -> list[int]:
    """The ``n`` of every ``custom`` signal whose handler ran."""
    received: list[int] = []

    @connect(custom)
    def handler(n: int, **kwargs: Any) -> None:
        received.append(n)

    return received


@contextmanager
def rolled_back(using: str | None = None) -> Iterator[None]:
    """An atomic block (a savepoint when nested) that is rolled back at its end."""
    with transaction.atomic(using=using):
        yield
        transaction.set_rollback(True, using=using)


def _broker_packs(*, take: bool) -> list[Any]:
    """The signed tasks on the configured broker, oldest first."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import OrmQ

    if Conf.ORM:
        rows = list(OrmQ.objects.using(Conf.ORM).order_by("id"))
        if take:
            OrmQ.objects.using(Conf.ORM).filter(pk__in=[r.pk for r in rows]).delete()
        return [row.payload for row in rows]
    broker = get_broker()
    packs: list[Any] = broker.connection.lrange(broker.list_key, 0, -1)
    if take:
        broker.connection.ltrim(broker.list_key, len(packs), -1)
    return packs


def purge() -> None:
    """Empty the broker, as a worker that took every task and died would."""
    _broker_packs(take=True)


def queued_tasks() -> list[dict[str, Any]]:
    """The tasks waiting on Django Q2's broker, unsigned and unpickled."""
    from django_q.signing import SignedPackage

    return [SignedPackage.loads(pack) for pack in _broker_packs(take=False)]


def run_queued() -> list[Any]:
    """Take every task off the broker and run it as a worker does."""
    from django_q.signing import SignedPackage

    results = []
    for pack in _broker_packs(take=True):
        task = SignedPackage.loads(pack)
        func = pydoc.locate(task["func"])
        assert callable(func), task["func"]
        results.append(func(*task["args"], **task["kwargs"]))
    return results


@pytest.fixture(autouse=True)
def _fresh_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test makes its own broker clients, with no broker cooling down."""
    monkeypatch.setattr(_brokers, "_brokers", {})
    monkeypatch.setattr(_brokers, "_failed_at", {})


@pytest.fixture(autouse=True)
def _empty_redis() -> None:
    """Each test starts with an empty Redis broker (the ORM one is in the DB)."""
    if settings.QSIGNALS_REDIS_URL:
        from django_q.brokers import get_broker

        get_broker().connection.flushdb()


@pytest.fixture
def unreachable_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Django Q2 configured for a Redis server that refuses connections."""
    from django_q.conf import Conf

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", {"host": "127.0.0.1", "port": port})


def broker_is_orm_on(alias: str) -> bool:
    from django_q.conf import Conf

    return bool(alias == Conf.ORM)


@contextmanager
def transactions_writing_orm_tasks(alias: str = "default") -> Iterator[list[int]]:
    """How many transactions committed tasks to the ORM broker's queue on
    ``alias`` during the block, as the database counts them; the count is put
    in the yielded list once the block ends.

    SQLite, in its default journal mode, adds one to the change counter in
    its file's header for each transaction that changed the file (the block
    must change nothing else). On PostgreSQL each row's ``xmin`` is the
    transaction that inserted it (the queue must be empty before the block).
    """
    connection = connections[alias]
    counted: list[int] = []
    if connection.vendor == "sqlite":
        path = Path(connection.settings_dict["NAME"])
        before = _change_counter(path)
        yield counted
        counted.append(_change_counter(path) - before)
    else:
        yield counted
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(DISTINCT xmin::text) FROM django_q_ormq")
            counted.append(cursor.fetchone()[0])


def _change_counter(path: Path) -> int:
    with path.open("rb") as database:
        database.seek(24)
        return int.from_bytes(database.read(4), "big")


class Worker:
    """A real ``manage.py qcluster`` process on the test database."""

    def __init__(self, log: Path, **extra_env: str) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "QSIGNALS_TEST_DB": connections["default"].settings_dict["NAME"],
            "QSIGNALS_TEST_DB_OTHER": connections["other"].settings_dict["NAME"],
            **extra_env,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
            ),
        }
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", "qcluster"],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"qcluster exited:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out; qcluster output:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        # Django Q2 stops its workers itself on SIGTERM; anything left of the
        # process group after that is killed.
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signals.SIGKILL)
            self._log_file.close()


@pytest.fixture
def worker(transactional_db: None, tmp_path: Path) -> Iterator[Worker]:
    running = Worker(tmp_path / "qcluster.log")
    yield running
    running.stop()


def _unreachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError:
        return True
    return False


def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, if they cannot."""
    from tests.test_outbox_browser import CHROMEDRIVER, CHROMIUM

    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            return f"needs {program} (Debian's chromium and chromium-driver)"
    # chromedriver and the test's server listen on 127.0.0.1.
    try:
        with socket.create_server(("127.0.0.1", 0)) as server:
            socket.create_connection(server.getsockname(), timeout=1).close()
    except OSError as exc:
        return f"needs connections to 127.0.0.1, which fail here ({exc})"
    return None


@pytest.hookimpl(trylast=True)  # after -m has deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    """Skip what needs absent services, or fail if REQUIRE_SERVICES=1."""
    required = os.environ.get("REQUIRE_SERVICES") == "1"
    browser_tests = [item for item in items if item.get_closest_marker("browser")]
    missing = _browser_missing() if browser_tests else None
    if missing:
        if required:
            raise pytest.UsageError(
                f"REQUIRE_SERVICES=1, but the browser tests {missing}"
            )
        for item in browser_tests:
            item.add_marker(pytest.mark.skip(reason=missing))
    problems = [
        f"{name} at {url} is not reachable"
        for name, url in (
            ("PostgreSQL", settings.QSIGNALS_DATABASE_URL),
            ("MySQL or MariaDB", settings.QSIGNALS_MYSQL_URL),
            ("Redis", settings.QSIGNALS_REDIS_URL),
        )
        if url and _unreachable(url)
    ]
    reasons: dict[str, str] = {}
    if not (
        (settings.QSIGNALS_DATABASE_URL and settings.QSIGNALS_REDIS_URL)
        or settings.QSIGNALS_MYSQL_URL
    ):
        reasons["services"] = (
            "needs PostgreSQL and Redis, or MySQL or MariaDB: set "
            "QSIGNALS_DATABASE_URL and QSIGNALS_REDIS_URL, or QSIGNALS_MYSQL_URL "
            "(see CONTRIBUTING.md)"
        )
    if not settings.QSIGNALS_REDIS_URL:
        reasons["redis"] = "needs Redis: set QSIGNALS_REDIS_URL (see CONTRIBUTING.md)"
    if not (settings.QSIGNALS_DATABASE_URL and settings.QSIGNALS_REDIS_URL):
        # The load and fault tests read PostgreSQL's own views.
        reasons["reliability"] = (
            "needs PostgreSQL and Redis: set QSIGNALS_DATABASE_URL and "
            "QSIGNALS_REDIS_URL (see CONTRIBUTING.md)"
        )
    skips = []
    for item in items:
        why = problems or [
            reason
            for marker, reason in reasons.items()
            if item.get_closest_marker(marker)
        ]
        if why:
            skips.append((item, "; ".join(why)))
    if not skips:
        return
    if required:
        raise pytest.UsageError(f"REQUIRE_SERVICES=1, but {skips[0][1]}")
    for item, reason in skips:
        item.add_marker(pytest.mark.skip(reason=reason))
