"""The outbox admin in a real browser: headless Chromium, driven by Selenium."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.db.models.signals import post_save

from django_q_signals.models import OutboxCall
from django_q_signals.worker import run_call
from tests.conftest import Connect, purge, queued_tasks
from tests.models import Article

if TYPE_CHECKING:
    from pytest_django.live_server_helper import LiveServer
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Where the screenshots of a run are saved.
SCREENSHOTS = Path(os.environ.get("QSIGNALS_SCREENSHOTS", "screenshots"))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.fixture
def outbox(connect: Connect[Any]) -> None:
    """Three calls in the outbox: one sent, two failed."""

    @connect(post_save, sender=Article, outbox=True)
    def reindex(instance: Article, **kwargs: Any) -> None:
        raise ValueError(f"cannot index {instance.title}")

    for title in ("first", "second"):
        Article.objects.create(title=title)
    for task in queued_tasks():
        with contextlib.suppress(ValueError):
            run_call(*task["args"])
    purge()
    Article.objects.create(title="third")


def screenshot(browser: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


@pytest.mark.usefixtures("outbox")
def test_an_admin_filters_the_outbox_sends_again_and_discards(
    browser: WebDriver, live_server: LiveServer
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    User.objects.create_superuser("admin", "admin@example.com", "secret")
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("secret")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    browser.find_element(By.LINK_TEXT, "Outbox calls").click()

    def rows() -> list[list[str]]:
        return [
            [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        ]

    assert len(rows()) == 3
    browser.find_element(By.LINK_TEXT, "Failed").click()
    failed = rows()
    assert [row[1] for row in failed] == ["Failed", "Failed"]
    assert {row[5] for row in failed} == {
        "ValueError: cannot index first",
        "ValueError: cannot index second",
    }
    screenshot(browser, "outbox-admin-failed")

    browser.find_element(By.ID, "action-toggle").click()  # every row shown
    Select(browser.find_element(By.NAME, "action")).select_by_visible_text(
        "Send again now"
    )
    browser.find_element(By.NAME, "index").click()
    message = browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    assert message == "Sent 2 call(s) to the broker."
    # With the third call's task, sent when it was written.
    assert len(queued_tasks()) == 3
    assert set(OutboxCall.objects.values_list("state", flat=True)) == {"sent"}

    browser.find_element(By.LINK_TEXT, "All").click()
    browser.find_element(By.CSS_SELECTOR, "#result_list tbody input").click()
    Select(browser.find_element(By.NAME, "action")).select_by_visible_text("Discard")
    browser.find_element(By.NAME, "index").click()
    assert browser.find_element(By.CSS_SELECTOR, ".messagelist").text == (
        "Discarded 1 call(s)."
    )
    assert len(rows()) == 2
    screenshot(browser, "outbox-admin-after")
