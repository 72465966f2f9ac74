"""pytest fixtures for projects with async receivers, loaded by pytest itself.

``qsignals_immediate`` runs async receivers in the test's process when their
calls would be queued; ``qsignals_calls`` captures those calls instead. See
``django_q_signals.testing``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django_q_signals.testing import CapturedCalls


@pytest.fixture
def qsignals_immediate() -> Iterator[None]:
    """Run async receivers during the test instead of queuing their calls."""
    # Imported here: pytest loads this plugin before Django is set up.
    from django_q_signals.testing import run_immediately

    with run_immediately():
        yield


@pytest.fixture
def qsignals_calls() -> Iterator[CapturedCalls]:
    """The calls async receivers would queue during the test, not queued."""
    from django_q_signals.testing import capture_calls

    with capture_calls() as calls:
        yield calls
