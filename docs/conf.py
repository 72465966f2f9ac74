"""Sphinx configuration for the django-q-signals documentation (`nox -s docs`)."""

import os
import sys
from importlib import metadata
from pathlib import Path

import django

# autodoc imports the package, whose models need Django set up: the smallest
# settings that do it are next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "_django_settings"
django.setup()

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

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.graphviz"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_django_settings.py"]

# The diagrams are drawn by Graphviz's `dot` (Debian's graphviz package) when
# the documentation is built; a diagram that does not parse fails the build.
graphviz_output_format = "svg"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Python's, Django's and Django Q2's own types: their documentation is not
# linked (intersphinx would need the network when building), so references
# to them cannot resolve. `Handler` is the decorated function's own type;
# `Model`, `QuerySet`, `HttpRequest`, `HttpResponse` and `Signal` are Django's,
# imported only for type checking.
nitpick_ignore = [
    ("py:class", name)
    for name in (
        "Model",
        "QuerySet",
        "HttpRequest",
        "HttpResponse",
        "Signal",
        "Handler",
    )
]
nitpick_ignore_regex = [
    ("py:class", r"collections\.abc\..*"),
    ("py:class", r"datetime\..*"),
    ("py:class", r"django\..*"),
    ("py:class", r"django_q\..*"),
    ("py:class", r"django_q_signals\._decorator\.Handler"),
]

# Section anchors for links such as [the guarantees](transactions.md#guarantees).
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"django-q-signals {release}"
html_static_path = ["_static"]
html_css_files = ["diagrams.css"]
