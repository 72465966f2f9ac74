"""The outbox's dashboard in a real browser: headless Chromium, driven by
Selenium."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.test import override_settings
from django.utils import timezone

from django_q_signals import _history, _registry
from django_q_signals.models import OutboxCall
from tests import test_outbox_browser
from tests.conftest import Connect, custom
from tests.test_command import shared_cache
from tests.test_status_browser import log_in

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]

# The outbox admin's fixtures: the project served by a thread, and Chromium.
server = test_outbox_browser.server
browser = test_outbox_browser.browser

#: Only when set: the folder the screenshots for the documentation go to.
SCREENSHOTS = os.environ.get("QSIGNALS_SCREENSHOTS")


def a_busy_site() -> None:
    """Three receivers' calls in the outbox and their last hour."""
    now = timezone.now()
    for receiver, state, minutes, alias in [
        ("shop.search.reindex_product", "sent", 0.2, "default"),
        ("shop.search.reindex_product", "running", 0.1, "default"),
        ("shop.search.reindex_product", "waiting", 0.1, "other"),
        ("shop.mail.send_receipt", "failed", 42, "default"),
        ("shop.mail.send_receipt", "failed", 7, "default"),
        ("shop.mail.send_receipt", "queued", 0.05, "default"),
        ("reports.render_pages", "running", 3, "default"),
    ]:
        OutboxCall.objects.using(alias).create(
            receiver=receiver,
            state=state,
            created=now - timedelta(minutes=minutes),
        )
    fast = [0.012, 0.018, 0.025, 0.031, 0.045] * 60 + [0.9, 1.6]
    _history.record(
        "default", "shop.search.reindex_product", runs=250, failures=0, waits=fast
    )
    _history.record(
        "other", "shop.search.reindex_product", runs=60, failures=0, waits=fast[:60]
    )
    _history.record(
        "default", "shop.mail.send_receipt", runs=48, failures=5, waits=[0.2] * 40
    )
    _history.record("default", "reports.render_pages", runs=6, failures=0, waits=[])


def test_an_admin_opens_the_dashboard_from_the_outbox(
    server: str,
    browser: WebDriver,
    connect: Connect[Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    # Only this receiver: its tasks wait on the broker, and no cluster runs.
    monkeypatch.setattr(_registry, "_registry", {})

    @connect(custom, on_commit=False)
    def notify(**kwargs: Any) -> None:
        pass

    for n in range(3):
        custom.send(sender=None, n=n)
    a_busy_site()
    log_in(browser, server)
    with override_settings(CACHES=shared_cache(tmp_path)):
        browser.find_element(By.LINK_TEXT, "Outbox calls").click()
        # The object tools' links are written in capitals.
        link = browser.find_element(By.CSS_SELECTOR, ".object-tools a.viewlink")
        assert link.text.lower() == "dashboard"
        link.click()
        assert browser.find_element(By.TAG_NAME, "h1").text == "Outbox dashboard"
        rows = {
            cells[0]: cells[1:]
            for row in browser.find_elements(
                By.CSS_SELECTOR, "#qsignals-receivers tbody tr"
            )
            if (cells := [cell.text for cell in row.find_elements(By.TAG_NAME, "td")])
        }
        assert list(rows) == [
            "reports.render_pages",
            "shop.mail.send_receipt",
            "shop.search.reindex_product",
        ]
        # queued, sent, running, failed, waiting, oldest, runs, failures,
        # median and 95th percentile.
        assert rows["shop.mail.send_receipt"][:5] == ["1", "0", "0", "2", "0"]
        assert rows["shop.mail.send_receipt"][5] == "42 minutes"
        assert rows["shop.mail.send_receipt"][6:] == ["48", "5", "206 ms", "206 ms"]
        assert rows["shop.search.reindex_product"][6:8] == ["310", "0"]
        assert rows["reports.render_pages"][8:] == ["-", "-"]
        warning = browser.find_element(By.CSS_SELECTOR, ".qsignals-warning").text
        assert warning.startswith("3 tasks wait on the broker and no qcluster runs")
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            # The table without the admin's side bar.
            browser.find_element(By.ID, "toggle-nav-sidebar").click()
            browser.set_window_size(1200, 780)
            browser.save_screenshot(str(Path(SCREENSHOTS) / "dashboard.png"))
