"""Per-row order and supersede (``ordered=True``, ``supersede=True``) with
real qcluster processes, PostgreSQL and Redis. Each commit bumps a row's
version; each handler run records the version it read, the version its
call's commit wrote, and when it started and ended (tests/reliability/
handlers.py), so that runs of one row overlapping, running out of order,
or missing are counted."""

from __future__ import annotations

import io
import itertools
import math
import os
import random
import signal as signals
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db.models import Count
from django.test import override_settings

from django_q_signals import _relay
from django_q_signals.models import OutboxCall
from tests.conftest import Worker, path
from tests.models import Blocked, Latest, Run, Sheet, Versioned
from tests.reliability.handlers import LOAD_RUN, POISON, blocked_saved
from tests.reliability.test_outbox import RELAY_AFTER, stop, workers

pytestmark = [
    pytest.mark.services,
    pytest.mark.reliability,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]

ROWS = 50
COMMITS = 2_000
#: Commits of the load that a cluster is killed in.
KILLED_COMMITS = 1_000
#: Commits to the one row of the supersede test.
LATEST_COMMITS = 1_000
#: Seconds for the workers to run every call.
DEADLINE = 240


@pytest.fixture(autouse=True)
def _relay_soon() -> Iterator[None]:
    with override_settings(Q_SIGNALS={"OUTBOX_RELAY_AFTER": RELAY_AFTER}):
        yield


@pytest.fixture(autouse=True)
def _no_scheduled_relay() -> None:
    """Only the test runs the relay, where it says so: elsewhere, a row's
    next call is sent by the worker that ran the one before it."""
    from django_q.models import Schedule

    Schedule.objects.filter(name="django_q_signals: outbox relay").delete()


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\nordered: {line}")


def clusters_up(running: list[Worker]) -> None:
    """Wait until every cluster of ``running`` has started its workers, as
    Django Q2's own status says."""
    from django_q.conf import Conf
    from django_q.status import Stat

    def up() -> bool:
        started = (Conf.IDLE, Conf.WORKING)
        return sum(stat.status in started for stat in Stat.get_all()) >= len(running)

    running[0].wait_for(up, timeout=60)


@dataclass
class Commits:
    """What a test committed: per row, its last version and when the commit
    that wrote it began."""

    last: dict[int, int] = field(default_factory=dict)
    last_began: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: The commits that bumped a version.
    count: int = 0


def created(model: type[Versioned], count: int, done: Commits) -> list[Versioned]:
    rows = []
    for _ in range(count):
        began = time.time()
        row = model._default_manager.create()
        done.last[row.pk], done.last_began[row.pk] = 0, began
        rows.append(row)
    return rows


def bump(
    rows: list[Versioned],
    commits: int,
    done: Commits,
    pick: random.Random | None = None,
) -> None:
    """``commits`` commits, one after the other, each bumping the version of
    one of ``rows`` picked at random."""
    pick = pick or random.Random(0)
    started = time.monotonic()
    for _ in range(commits):
        row = pick.choice(rows)
        row.version += 1
        done.last_began[row.pk] = time.time()
        row.save(update_fields=["version"])
        done.last[row.pk] = row.version
        done.count += 1
    done.seconds += time.monotonic() - started


def settle(
    running: list[Worker],
    model: type[Versioned],
    *,
    relay: bool = False,
    timeout: float = DEADLINE,
) -> tuple[float, int]:
    """Wait until no call for ``model``'s rows is left in the outbox (every
    handler returned), running the relay every second if ``relay``: how long
    it took, and the most calls seen waiting at once."""
    calls = OutboxCall.objects.filter(model=model._meta.label)
    started = relayed = time.monotonic()
    most_waiting = 0
    while True:
        states = dict(calls.values_list("state").annotate(Count("pk")).order_by())
        if not states:
            return time.monotonic() - started, most_waiting
        most_waiting = max(most_waiting, states.get(OutboxCall.State.WAITING, 0))
        for each in running:
            if each.process.poll() is not None:
                pytest.fail(f"qcluster exited:\n{each.log.read_text()}")
        if time.monotonic() - started > timeout:
            pytest.fail(f"calls left after {timeout} s, by state: {states}")
        if relay and time.monotonic() - relayed >= 1:
            _relay.run()
            relayed = time.monotonic()
        time.sleep(0.2)


def history(receiver: str) -> dict[int, list[Run]]:
    """The runs of a handler, per row, in the order they started."""
    runs: dict[int, list[Run]] = defaultdict(list)
    for run in Run.objects.filter(receiver=receiver).order_by("start", "pk"):
        runs[run.row].append(run)
    return runs


def overlapping(runs: list[Run], killed_at: float) -> int:
    """How many of a row's runs started before an earlier run had ended (a
    run that never ended, at ``killed_at``)."""
    count, ended = 0, -math.inf
    for run in runs:
        count += run.start < ended
        ended = max(ended, killed_at if run.end is None else run.end)
    return count


def going_down(values: list[int]) -> int:
    """How many values are lower than the one before them."""
    return sum(later < earlier for earlier, later in itertools.pairwise(values))


@dataclass
class Checked:
    """What a handler's runs show, summed over the rows committed to."""

    runs: int = 0
    overlapping: int = 0
    read_going_down: int = 0
    written_going_down: int = 0
    #: Rows whose last version no run read.
    lost: int = 0
    #: Versions committed whose call never ran.
    missing: int = 0
    #: Runs of a call that had run before.
    ran_again: int = 0
    #: Rows whose last run began before the commit of their last version did.
    early: int = 0

    def line(self) -> str:
        return (
            f"{self.runs} runs; runs of one row overlapping {self.overlapping}, "
            f"versions read going down {self.read_going_down}, versions "
            f"written going down {self.written_going_down}; lost {self.lost}, "
            f"versions never handled {self.missing}, run again {self.ran_again}"
        )


def check(receiver: str, commits: Commits, killed_at: float = math.inf) -> Checked:
    runs = history(receiver)
    checked = Checked()
    for pk, last in commits.last.items():
        row = runs[pk]
        written = [run.written for run in row]
        checked.runs += len(row)
        checked.overlapping += overlapping(row, killed_at)
        checked.read_going_down += going_down([run.read for run in row])
        checked.written_going_down += going_down(written)
        checked.lost += all(run.read != last for run in row)
        checked.missing += len(set(range(last + 1)) - set(written))
        checked.ran_again += sum(n - 1 for n in Counter(written).values())
        checked.early += not row or row[-1].start < commits.last_began[pk]
    return checked


def assert_in_order(checked: Checked) -> None:
    assert checked.overlapping == 0
    assert checked.read_going_down == 0
    assert checked.written_going_down == 0
    assert checked.lost == 0
    assert checked.missing == 0
    assert checked.early == 0


# A load of commits to 50 rows, through two clusters: each commit calls an
# ordered receiver and the same one without ordered.


def test_ordered_runs_of_a_row_never_overlap_and_follow_the_commits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commits = Commits()
    running = workers(tmp_path, 2)
    try:
        clusters_up(running)
        rows = created(Sheet, ROWS, commits)
        bump(rows, COMMITS, commits)
        waited, most_waiting = settle(running, Sheet)
    finally:
        stop(running)
    ordered, unordered = check("ordered", commits), check("unordered", commits)
    clusters = Counter(Run.objects.values_list("cluster", flat=True))
    report(
        capsys,
        f"{COMMITS} commits to {ROWS} rows (after their {ROWS} creations) in "
        f"{commits.seconds:.1f} s, each calling an ordered receiver and the "
        f"same one without ordered, through 2 qcluster processes of 2 workers "
        f"(runs by #1: {clusters['1']}, by #2: {clusters['2']}): all run "
        f"{waited:.1f} s after the last commit, at most {most_waiting} calls "
        "seen waiting at once",
    )
    report(capsys, f"ordered: {ordered.line()}")
    report(capsys, f"without ordered: {unordered.line()}")
    assert ordered.runs == unordered.runs == COMMITS + ROWS
    assert_in_order(ordered)
    # Without ordered, runs of a row overlap where the workers lag behind
    # the commits: printed, not asserted, as on a slow machine they keep up.
    assert unordered.lost == unordered.missing == 0


# The same, with a cluster killed while it runs a handler.


def kill_inside_a_handler(
    worker: Worker, cluster: str, commit: Callable[[], None]
) -> float:
    """Commit, one commit at a time, until one of ``worker``'s runs of the
    ordered handler has started and not ended; then SIGKILL its processes.
    When."""
    unfinished = Run.objects.filter(receiver="ordered", cluster=cluster, end=None)
    deadline = time.monotonic() + 120
    while not unfinished.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"no run of cluster #{cluster}:\n{worker.log.read_text()}")
        commit()
        # The call may be running now: a handler run lasts LOAD_RUN.
        watching = time.monotonic() + 2 * LOAD_RUN
        while time.monotonic() < watching and not unfinished.exists():
            pass
    os.killpg(worker.process.pid, signals.SIGKILL)
    worker.process.wait()
    return time.time()


def test_ordered_runs_keep_their_order_when_a_cluster_is_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Handlers time out after 3 s: a dead run's claim expires 8 s after it began.
    env = {"QSIGNALS_RETRY": "4"}
    commits = Commits()
    running = workers(tmp_path, 2, **env)
    killed = running[0]
    try:
        clusters_up(running)
        rows = created(Sheet, ROWS, commits)
        pick = random.Random(0)
        bump(rows, KILLED_COMMITS // 2, commits, pick)
        killed_at = kill_inside_a_handler(
            killed, "1", lambda: bump(rows, 1, commits, pick)
        )
        before = Run.objects.count()
        running[0] = Worker(tmp_path / "restarted.log", QSIGNALS_CLUSTER="3", **env)
        bump(rows, max(0, KILLED_COMMITS - commits.count), commits, pick)
        waited, _ = settle(running, Sheet, relay=True)
    finally:
        killed.stop()
        stop(running)
    ordered = check("ordered", commits, killed_at)
    unordered = check("unordered", commits, killed_at)
    cut = Counter(Run.objects.filter(end=None).values_list("receiver", "cluster"))
    report(
        capsys,
        f"{commits.count} commits to {ROWS} rows, a cluster SIGKILLed after "
        f"{before} runs, inside {cut['ordered', '1']} run(s) of the ordered "
        f"handler and {cut['unordered', '1']} of the other, and started again: "
        f"all run {waited:.1f} s after the last commit",
    )
    report(capsys, f"ordered: {ordered.line()}")
    report(capsys, f"without ordered: {unordered.line()}")
    assert {cluster for _, cluster in cut} <= {"1"}
    assert_in_order(ordered)
    assert unordered.lost == unordered.missing == 0


# Supersede: one row saved as fast as one process can.


def test_a_row_saved_a_thousand_times_runs_far_fewer_times_and_ends_current(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commits = Commits()
    running = workers(tmp_path, 1)
    try:
        clusters_up(running)
        rows = created(Latest, 1, commits)
        settle(running, Latest)
        bump(rows, LATEST_COMMITS, commits)
        waited, _ = settle(running, Latest)
    finally:
        stop(running)
    report(
        capsys,
        f"{LATEST_COMMITS} commits to one row in {commits.seconds:.1f} s, each "
        "calling a supersede receiver and a supersede and ordered one, both "
        f"of a 50 ms handler, through 1 qcluster process of 2 workers: all "
        f"run {waited:.1f} s after the last commit",
    )
    for receiver in ("supersede", "supersede_ordered"):
        checked = check(receiver, commits)
        [row] = history(receiver).values()
        [last] = [run for run in row if run.written == LATEST_COMMITS]
        runs = checked.runs - 1  # but the creation's
        report(
            capsys,
            f"{receiver}: the handler ran {runs} times for the {LATEST_COMMITS} "
            f"commits, the last commit's call reading version {last.read}; runs "
            f"overlapping {checked.overlapping}, versions read going down "
            f"{checked.read_going_down}, lost {checked.lost}",
        )
        assert runs < LATEST_COMMITS // 2
        assert last.read == LATEST_COMMITS
        assert checked.lost == checked.early == 0
        if receiver == "supersede_ordered":
            assert row[-1] == last
            assert checked.overlapping == checked.read_going_down == 0


# A call that always fails holds back its row's later calls.


def receiver_section(listing: str, name: str) -> list[str]:
    """The lines ``manage.py qsignals`` wrote under a receiver's name, their
    spaces squeezed."""
    lines = [" ".join(line.split()) for line in listing.splitlines()]
    start = lines.index(name) + 1
    return lines[start : lines.index("", start)]


def test_a_failed_call_holds_back_its_row_until_it_is_discarded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commits = Commits()
    running = workers(tmp_path, 1)
    calls = OutboxCall.objects.filter(model=Blocked._meta.label).order_by("pk")

    def outbox() -> list[tuple[str, object]]:
        return list(calls.values_list("state", "due"))

    # The poison call failed for good, the 3 after it wait.
    held = [
        (OutboxCall.State.FAILED, None),
        *[(OutboxCall.State.WAITING, None)] * 3,
    ]
    try:
        clusters_up(running)
        rows = created(Blocked, 1, commits)
        bump(rows, POISON + 3, commits)
        deadline = time.monotonic() + 60
        while outbox() != held:
            if time.monotonic() > deadline:
                pytest.fail(f"outbox: {outbox()}")
            _relay.run()  # sends the poison call's retry
            time.sleep(0.5)
        poison, *waiting = calls.all()
        blockers = {call.blocked_by for call in waiting}
        stats = io.StringIO()
        call_command("qsignals", "--stats", stdout=stats)
        ran = Run.objects.order_by("start").values_list("written", flat=True)
        ran_before = list(ran)
        discarded = io.StringIO()
        call_command("qsignals", "discard", f"default:{poison.pk}", stdout=discarded)
        waited, _ = settle(running, Blocked, timeout=60)
    finally:
        stop(running)
    ran_after = list(ran.all())
    said = [
        line
        for line in receiver_section(stats.getvalue(), path(blocked_saved))
        if line.startswith(("outbox:", "failed calls:", "waiting for:"))
    ]
    report(
        capsys,
        f"a call failing for good (retries=1, {poison.attempts} attempts) held "
        f"back the 3 later calls of its row; --stats said {said}; after "
        f"`qsignals discard` they ran {waited:.1f} s later, in the order "
        f"{ran_after[len(ran_before) :]}",
    )
    assert poison.attempts == 2
    assert blockers == {poison}
    assert ran_before == [0, 1, POISON, POISON]
    assert said[0].startswith("outbox: 1 failed, 3 waiting;")
    assert said[1] == f"failed calls: default:{poison.pk}"
    assert said[2].startswith(
        f"waiting for: default:{poison.pk} (failed) holds back 3 calls"
    )
    assert discarded.getvalue().strip() == "Discarded 1 outbox call(s)."
    assert ran_after == [*ran_before, POISON + 1, POISON + 2, POISON + 3]
