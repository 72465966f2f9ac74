"""What the reliability tests share: a Redis server of their own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


class RedisServer:
    """A redis-server of the test's own, which it can stop and start."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def tasks(self) -> list[dict[str, Any]]:
        """The tasks on it, unsigned (Django Q2's broker must point at it)."""
        from django_q.brokers import get_broker
        from django_q.signing import SignedPackage

        broker = get_broker()
        packs = broker.connection.lrange(broker.list_key, 0, -1)
        broker.connection.close()
        return [SignedPackage.loads(pack) for pack in packs]


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """Django Q2's broker pointed at a redis-server this test controls."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from django_q.conf import Conf
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    server = RedisServer(tmp_path)
    server.start()
    monkeypatch.setattr(Conf, "ORM", None)
    # One quick retry, so the test does not wait out redis-py's backoff.
    retry = Retry(NoBackoff(), 1)
    monkeypatch.setattr(Conf, "REDIS", {"port": server.port, "retry": retry})
    yield server
    server.stop()
