from __future__ import annotations

import contextlib
import os
import pydoc
import signal as signals
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.db import connections, transaction
from django.dispatch import Signal

from django_q_signals import async_receiver

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


@contextmanager
def rolled_back(using: str | None = None) -> Iterator[None]:
    """An atomic block (a savepoint when nested) that is rolled back at its end."""
    with transaction.atomic(using=using):
        yield
        transaction.set_rollback(True, using=using)


def queued_tasks() -> list[dict[str, Any]]:
    """The tasks waiting on Django Q2's ORM broker, unsigned and unpickled."""
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    return [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]


def run_queued() -> list[Any]:
    """Take every task off the ORM broker and run it as a worker does."""
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    results = []
    for row in OrmQ.objects.order_by("id"):
        task = SignedPackage.loads(row.payload)
        row.delete()
        func = pydoc.locate(task["func"])
        assert callable(func), task["func"]
        results.append(func(*task["args"], **task["kwargs"]))
    return results


class Worker:
    """A real ``manage.py qcluster`` process on the test database."""

    def __init__(self, log: Path) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "QSIGNALS_TEST_DB": connections["default"].settings_dict["NAME"],
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
