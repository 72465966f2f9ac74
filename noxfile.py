"""Development tasks. `nox -l` lists them; `nox` runs lint, types and tests."""

import os
import shutil
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import nox

# The supported versions, in one place: the matrix below is built from them and
# `nox -s cog` writes them into pyproject.toml's classifiers, README.md and
# docs/installation.md.
PY_VERSIONS = ["3.10", "3.11", "3.12", "3.13"]
DJ_VERSIONS = ["5.2", "6.0", "6.1"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


# Every (Python, Django) pair Django supports: Django 6.x needs Python 3.12+.
MATRIX = [
    (py, dj)
    for py in PY_VERSIONS
    for dj in DJ_VERSIONS
    if _version(dj) < (6,) or _version(py) >= (3, 12)
]
# The pairs whose matrix session also runs the PostgreSQL and Redis pass: the
# newest Python of each Django version. What those backends do changes with
# Django, not with Python; the SQLite pass runs on every pair.
SERVICE_PAIRS = [
    max((pair for pair in MATRIX if pair[1] == dj), key=lambda pair: _version(pair[0]))
    for dj in DJ_VERSIONS
]

TEST_DEPS = [
    "pytest",
    "pytest-django",
    # The registry is global: tests in random order show any that lean on
    # another's leftovers.
    "pytest-randomly",
    "coverage[toml]>=7.10.3",
    "redis",
    "django-redis",
    # The outbox admin's browser test drives Debian's chromium.
    "selenium",
    "psycopg[binary]",
]
DOCS_DEPS = ["sphinx", "furo", "myst-parser"]
# The cog blocks in these files `import noxfile`: hence -I . and nox installed.
COG = ["cog", "-I", "."]
COG_FILES = ["pyproject.toml", "README.md", "docs/installation.md"]

nox.needs_version = ">=2025.10.16"
nox.options.sessions = ["lint", "types", "tests"]
nox.options.error_on_external_run = True
# Use the Pythons that are installed; never try to download one.
nox.options.download_python = "never"


# The variables that point the tests at PostgreSQL and Redis. Only where both
# are set does the second pass run; nothing else in the environment (another
# project's DATABASE_URL or REDIS_URL) is ever read.
SERVICE_VARIABLES = ("QSIGNALS_DATABASE_URL", "QSIGNALS_REDIS_URL")
# The variable that points the tests at MySQL or MariaDB: the third pass.
MYSQL_VARIABLE = "QSIGNALS_MYSQL_URL"
ALL_VARIABLES = (*SERVICE_VARIABLES, MYSQL_VARIABLE)


def run_tests(
    session: nox.Session, *command: str, full: bool = False, services: bool = True
) -> bool:
    """The suite on SQLite with the ORM broker (and, ``full``, again without
    "django_q_signals" in INSTALLED_APPS); where ``services`` and the service
    variables are set, on PostgreSQL with Redis; and, ``full``, where
    QSIGNALS_MYSQL_URL is set, on MySQL or MariaDB with the ORM broker on it.
    Whether every pass ran.

    The slow load and fault tests are left to `nox -s reliability`.
    """
    required = os.environ.get("REQUIRE_SERVICES") == "1"
    only = dict.fromkeys(ALL_VARIABLES, "")
    session.run(*command, "-m", "not services", *session.posargs, env=only)
    if full:
        # As every 0.x project is set up: everything but the outbox works.
        session.run(
            *command,
            *("-m", "not services and not outbox"),
            *("--ds", "tests.settings_without_app"),
            *session.posargs,
            env=only,
            # `-- -k name` may select only tests that need the app.
            success_codes=[0, 5] if session.posargs else [0],
        )
    if not services:
        return False
    every = True
    missing = [name for name in SERVICE_VARIABLES if not os.environ.get(name)]
    if missing:
        if required:
            session.error(f"REQUIRE_SERVICES=1, but {' and '.join(missing)} not set")
        session.log(
            f"Not run on PostgreSQL and Redis: set {' and '.join(SERVICE_VARIABLES)} "
            "to run the suite there too (see CONTRIBUTING.md)."
        )
        every = False
    else:
        session.run(
            *command,
            "-m",
            "not reliability",
            *session.posargs,
            env={**only, **{name: os.environ[name] for name in SERVICE_VARIABLES}},
        )
    if not full:
        return False
    if not os.environ.get(MYSQL_VARIABLE):
        if required:
            session.error(f"REQUIRE_SERVICES=1, but {MYSQL_VARIABLE} not set")
        session.log(
            f"Not run on MySQL or MariaDB: set {MYSQL_VARIABLE} to run the suite "
            "there too (see CONTRIBUTING.md)."
        )
        return False
    # Django's MySQL and MariaDB driver builds against the client library
    # (Debian's libmariadb-dev and pkg-config; .ci/run installs them): only
    # where this pass runs.
    session.install("mysqlclient")
    # The ORM broker on MySQL or MariaDB itself: Redis is the second pass's.
    session.run(
        *command,
        "-m",
        "not reliability and not redis",
        *session.posargs,
        env={**only, MYSQL_VARIABLE: os.environ[MYSQL_VARIABLE]},
    )
    return every


@nox.session
def tests(session: nox.Session) -> None:
    """Run the tests under coverage: 100% branch coverage where every pass ran."""
    session.install("-e", ".", *TEST_DEPS)
    session.run("coverage", "erase")
    # `patch = ["subprocess"]` in pyproject.toml makes the qcluster processes the
    # tests start record coverage too; `coverage combine` merges their files.
    every = run_tests(session, "coverage", "run", "-m", "pytest", full=True)
    session.run("coverage", "combine", "--quiet")
    # Some lines only run on PostgreSQL or MySQL, and a subset of the tests
    # (`nox -s tests -- -k name`) cannot reach 100% either.
    if every and not session.posargs:
        session.run("coverage", "report")
    else:
        session.run("coverage", "report", "--fail-under=0")


# 0.3.0's test suite, from its published source distribution, and how many
# tests it has: all of them must pass against this checkout.
COMPAT_RELEASE = "django-q-signals==0.3.0"
COMPAT_TESTS = 9
# Its test settings plus this line: its tests never commit.
COMPAT_SETTINGS = """\
from tests.settings import *  # noqa: F403

Q_SIGNALS = {"ON_COMMIT": False}
"""


@nox.session
def compat(session: nox.Session) -> None:
    """0.3.0's own tests, unchanged, against this checkout: every one must pass."""
    session.install("-e", ".", "pytest", "pytest-django")
    with tempfile.TemporaryDirectory(prefix="qsignals-compat-") as tmp:
        root = Path(tmp)
        session.run(
            *("python", "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", ":all:", "--dest", tmp, COMPAT_RELEASE),
        )
        [sdist] = root.glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            # Its tests only: its package must not shadow this checkout's.
            tests = [
                member
                for member in archive.getmembers()
                if member.name.split("/")[1:2] == ["tests"]
            ]
            archive.extractall(root, members=tests, filter="data")
        [unpacked] = (path for path in root.iterdir() if path.is_dir())
        (unpacked / "compat_settings.py").write_text(COMPAT_SETTINGS)
        # An empty pytest.ini: none of 0.3.0's options (xdist, its src/ on
        # the path), nor this project's.
        (unpacked / "pytest.ini").write_text("[pytest]\n")
        report = root / "report.xml"
        with session.chdir(unpacked):
            session.run(
                *("python", "-m", "pytest", "tests", "-p", "no:cacheprovider"),
                *("--ds", "compat_settings", "--junitxml", str(report)),
                *session.posargs,
            )
        suite = ET.parse(report).getroot().find("testsuite")
        assert suite is not None
        counts = {
            name: int(suite.get(name, 0))
            for name in ("tests", "failures", "errors", "skipped")
        }
        passed = counts["tests"] - counts["failures"] - counts["errors"]
        passed -= counts["skipped"]
        if passed != COMPAT_TESTS and not session.posargs:
            session.error(f"{passed} of 0.3.0's {COMPAT_TESTS} tests passed: {counts}")
        session.log(f"{passed} of 0.3.0's {COMPAT_TESTS} tests passed")


# Its own databases and Redis database, so that it can run while the tests do.
RELIABILITY_SERVICES = {
    "QSIGNALS_DATABASE_URL": "postgres://postgres@127.0.0.1:5432/qsignals_reliability",
    "QSIGNALS_REDIS_URL": "redis://127.0.0.1:6379/14",
    "QSIGNALS_MYSQL_URL": "",
}


@nox.session
def reliability(session: nox.Session) -> None:
    """Load, faults and hostile input with real qcluster processes (tests/reliability).

    Needs PostgreSQL and Redis; prints the load test's figures.
    """
    session.install("-e", ".", *TEST_DEPS)
    session.run(
        "pytest",
        "tests/reliability",
        "--durations=5",
        *session.posargs,
        env=RELIABILITY_SERVICES,
    )


@nox.session
@nox.parametrize(
    ["python", "django"], MATRIX, ids=[f"{p}-django{d}" for p, d in MATRIX]
)
def matrix(session: nox.Session, django: str) -> None:
    """Run the tests against each supported (Python, Django) pair: on SQLite,
    and on PostgreSQL and Redis for the pairs in SERVICE_PAIRS."""
    # The built wheel, not the source tree, so packaging mistakes show up here.
    session.install(".", f"django~={django}.0", *TEST_DEPS)
    # MySQL and MariaDB once, in `nox -s tests`: CI's time goes on the pairs.
    services = (session.python, django) in SERVICE_PAIRS
    if not services:
        session.log(
            "Not run on PostgreSQL and Redis: that pass is for "
            + ", ".join(f"matrix({py}-django{dj})" for py, dj in SERVICE_PAIRS)
        )
    run_tests(session, "pytest", services=services)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff, and cog --check so the versions cog writes cannot drift."""
    session.install("ruff", "cogapp", "nox")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run(*COG, "--check", "--diff", "--check-fail-msg=nox -s cog", *COG_FILES)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation in docs/ to docs/_build/html; warnings are errors."""
    # The diagrams are drawn by Graphviz's `dot` as the pages are built.
    if not shutil.which("dot"):
        session.error(
            "`dot` not found: install Graphviz (Debian: apt-get install graphviz), "
            "which draws the documentation's diagrams."
        )
    # The package itself, so that docs/conf.py reads its version from metadata.
    session.install(".", *DOCS_DEPS)
    session.run(
        "sphinx-build",
        *("-W", "--keep-going", "-n", "-E"),
        *("-b", "html", "docs", "docs/_build/html"),
        *session.posargs,
    )


@nox.session
def cog(session: nox.Session) -> None:
    """Rewrite the version lists in pyproject.toml, README.md and the docs."""
    session.install("cogapp", "nox")
    session.run(*COG, "-r", *COG_FILES)


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict with django-stubs, on the package and the tests."""
    session.install("-e", ".", "django-stubs[compatible-mypy]", *TEST_DEPS)
    # django-stubs' plugin imports tests.settings: without the service URLs
    # it configures SQLite only, so no other database driver is needed to read it.
    no_services = dict.fromkeys(ALL_VARIABLES, "")
    session.run("mypy", "src", "tests", env=no_services)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the example project end to end (example/demo.py)."""
    session.install(".")
    session.run("python", "example/demo.py")


@nox.session
def chart(session: nox.Session) -> None:
    """Draw the performance page's headline chart from its tables (bench/chart.py)."""
    session.install("matplotlib")
    session.run("python", "-m", "bench.chart", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark in bench/: prints a table, writes a chart to bench/results/."""
    session.install(".", "matplotlib", "redis", "psycopg[binary]")
    session.run("python", "-m", "bench.run", *session.posargs)
