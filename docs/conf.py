"""Sphinx configuration for the django-q-signals documentation (`nox -s docs`)."""

from importlib import metadata
from pathlib import Path

project = "django-q-signals"
author = "django-q-signals developers"
copyright = author


def _release() -> str:
    """The version, from the installed package or else from pyproject.toml."""
    try:
        return metadata.version(project)
    except metadata.PackageNotFoundError:
        import tomllib  # Python 3.11+, only needed when building from a bare checkout

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


release = _release()
version = ".".join(release.split(".")[:2])

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

# Section anchors for links such as [the guarantees](transactions.md#guarantees).
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"django-q-signals {release}"
html_static_path = ["_static"]
