"""Development tasks. `nox -l` lists them; `nox` runs lint, types and tests."""

import os

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

TEST_DEPS = [
    "pytest",
    "pytest-django",
    "coverage[toml]>=7.10.3",
    "redis",
    "django-redis",
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


# Where the second pass of the tests finds PostgreSQL and Redis. It skips,
# saying why, where they are not running, unless REQUIRE_SERVICES=1.
SERVICES = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/django_q_signals",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
}


def run_tests(session: nox.Session, *command: str) -> None:
    """The suite twice: SQLite with the ORM broker, then PostgreSQL with Redis.

    The slow load and fault tests are left to `nox -s reliability`.
    """
    services = {name: os.environ.get(name, url) for name, url in SERVICES.items()}
    session.run(*command, "-m", "not services", *session.posargs)
    session.run(*command, "-m", "not reliability", *session.posargs, env=services)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the tests under coverage (100% branch coverage required)."""
    session.install("-e", ".", *TEST_DEPS)
    session.run("coverage", "erase")
    # `patch = ["subprocess"]` in pyproject.toml makes the qcluster processes the
    # tests start record coverage too; `coverage combine` merges their files.
    run_tests(session, "coverage", "run", "-m", "pytest")
    session.run("coverage", "combine", "--quiet")
    # A subset of the tests (`nox -s tests -- -k name`) cannot reach 100%.
    fail_under = ["--fail-under=0"] if session.posargs else []
    session.run("coverage", "report", *fail_under)


# Its own databases and Redis database, so that it can run while the tests do.
RELIABILITY_SERVICES = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/qsignals_reliability",
    "REDIS_URL": "redis://127.0.0.1:6379/14",
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
    """Run the tests against each supported (Python, Django) pair."""
    # The built wheel, not the source tree, so packaging mistakes show up here.
    session.install(".", f"django~={django}.0", *TEST_DEPS)
    run_tests(session, "pytest")


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
    session.run("mypy", "src", "tests")


@nox.session
def demo(session: nox.Session) -> None:
    """Run the example project end to end (example/demo.py)."""
    session.install(".")
    session.run("python", "example/demo.py")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark in bench/: prints a table, writes a chart to bench/results/."""
    session.install(".", "matplotlib", "redis", "psycopg[binary]")
    session.run("python", "bench/run.py", *session.posargs)
