"""10,000 mixed signals through two qcluster processes on Redis and PostgreSQL."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Worker
from tests.models import Crate, Delivery, Parcel, Tag
from tests.reliability import workload

pytestmark = [
    pytest.mark.services,
    pytest.mark.reliability,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
]

ITEMS = 625  # of each model: 1,250 items, 8 signals each
DEADLINE = 240  # seconds for the workers to catch up


def test_no_signal_is_lost_under_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = [
        Worker(tmp_path / f"qcluster-{n}.log", QSIGNALS_CLUSTER=str(n)) for n in (1, 2)
    ]
    try:
        tag = Tag.objects.create(name="load")
        started = time.monotonic()
        expected = workload.send({Parcel: "unbatched", Crate: "batched"}, ITEMS, tag)
        sent = time.monotonic() - started
        wanted = {(r, key) for r, keys in expected.items() for key in keys}
        signals = sum(len(keys) for keys in expected.values())
        deadline = started + DEADLINE
        while not wanted <= set(workload.delivered()) and time.monotonic() < deadline:
            for each in workers:
                if each.process.poll() is not None:
                    pytest.fail(f"qcluster exited:\n{each.log.read_text()}")
            time.sleep(0.2)
        wall = time.monotonic() - started
        time.sleep(1)  # room for a late duplicate to show up
        calls = workload.delivered()
        clusters = Counter(Delivery.objects.values_list("cluster", flat=True))
    finally:
        for each in workers:
            each.stop()

    missing = wanted - set(calls)
    duplicates = Counter(dict.fromkeys(expected, 0))
    for (receiver, _), n in calls.items():
        duplicates[receiver] += n - 1
    summary = (
        f"\nload: {signals} signals ({ITEMS * 2} items, 8 signals each) through 2 "
        f"qcluster processes on Redis and PostgreSQL: sent in {sent:.1f} s, all "
        f"handled {wall:.1f} s after the first save ({signals / wall:.0f}/s); "
        f"missing {len(missing)}, duplicates {sum(duplicates.values())}"
    )
    lines = [summary]
    lines += [
        f"load: {receiver}: {len(keys)} signals, missing "
        f"{sum(1 for m in missing if m[0] == receiver)}, duplicates "
        f"{duplicates[receiver]}"
        for receiver, keys in expected.items()
    ]
    lines.append(
        "load: calls run per qcluster: "
        + ", ".join(f"#{name}: {n}" for name, n in sorted(clusters.items()))
    )
    with capsys.disabled():
        print("\n".join(lines))
    assert signals == 10_000
    assert not missing, f"{len(missing)} missing, e.g. {sorted(missing)[:10]}"
