"""The status fragment in a real browser: headless Chromium polls a page's
fragment with htmx while a handler reports its progress."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.db.models.signals import post_save
from django.test import override_settings

from django_q_signals import progress
from django_q_signals._progress import EVERY, flush
from tests import test_outbox_browser
from tests.conftest import Connect, run_queued
from tests.models import Article

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

# The outbox admin's fixtures: the project served by a thread, and Chromium.
server = test_outbox_browser.server
browser = test_outbox_browser.browser

#: The npm registry, where htmx is published; the library does not ship it.
REGISTRY = "https://registry.npmjs.org/htmx.org"
#: Only when set: the folder the screenshots for the documentation go to.
SCREENSHOTS = os.environ.get("QSIGNALS_SCREENSHOTS")


def download_htmx(folder: Path) -> Path:
    """htmx 2's newest release from the npm registry, checked against the
    digest the registry gives: its htmx.min.js, written into ``folder``."""
    request = urllib.request.Request(
        REGISTRY, headers={"Accept": "application/vnd.npm.install-v1+json"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        versions = json.load(response)["versions"]
    newest = max(
        (name for name in versions if name.startswith("2.") and "-" not in name),
        key=lambda name: tuple(map(int, name.split("."))),
    )
    dist = versions[newest]["dist"]
    with urllib.request.urlopen(dist["tarball"], timeout=20) as response:
        tarball = response.read()
    algorithm, _, digest = dist["integrity"].partition("-")
    assert hashlib.new(algorithm, tarball).digest() == base64.b64decode(digest), (
        f"htmx {newest}'s tarball does not match the registry's digest"
    )
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        script = archive.extractfile("package/dist/htmx.min.js")
        assert script is not None
        target = folder / "htmx.min.js"
        target.write_bytes(script.read())
    return target


@pytest.fixture(scope="session")
def htmx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding htmx.min.js; where it cannot be downloaded, the test
    is skipped (or fails, with REQUIRE_SERVICES=1)."""
    folder = tmp_path_factory.mktemp("htmx")
    try:
        download_htmx(folder)
    except OSError as exc:
        reason = f"needs htmx from {REGISTRY}, which cannot be downloaded ({exc})"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1, but the browser test {reason}")
        pytest.skip(reason)
    return folder


@pytest.fixture
def static_htmx(htmx: Path) -> Iterator[None]:
    """The test server serves htmx.min.js as a static file."""
    with override_settings(STATICFILES_DIRS=[str(htmx)]):
        yield


def log_in(browser: WebDriver, server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    User.objects.create_superuser("admin", "admin@example.com", "secret")
    browser.get(f"{server}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("secret")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # Logged in: the admin's index, with its log-out form. The next page is
    # not asked for while the login's own navigation may still end on top of it.
    WebDriverWait(browser, 30).until(
        lambda browser: browser.find_elements(By.ID, "logout-form")
    )


def shown_on(browser: WebDriver, css: str) -> Callable[[Any], str | None]:
    """For WebDriverWait: the text of the element ``css`` finds, if any (the
    fragment replaces itself as it polls)."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By

    def text(_: Any) -> str | None:
        try:
            return str(browser.find_element(By.CSS_SELECTOR, css).text)
        except (NoSuchElementException, StaleElementReferenceException):
            return None

    return text


@pytest.mark.usefixtures("static_htmx")
def test_a_page_shows_the_progress_moving_then_the_fragment_goes(
    server: str, browser: WebDriver, connect: Connect[Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shown: list[threading.Event] = [threading.Event(), threading.Event()]

    @connect(post_save, sender=Article, outbox=True)
    def render_pages(instance: Article, **kwargs: Any) -> None:
        for step, seen in zip((2, 4), shown, strict=True):
            progress(step, 5, "pages")
            flush()
            # The next report comes a second after this one, or it would be
            # thinned out; and not before the page has shown this one.
            time.sleep(EVERY)
            assert seen.wait(30), f"the page never showed {step} of 5"

    log_in(browser, server)
    # The page leaves no connection to the test's database open.
    browser.implicitly_wait(0)
    article = Article.objects.create(title="Annual report")

    def work() -> None:
        try:
            run_queued()
        finally:
            connections.close_all()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        browser.get(f"{server}/articles/{article.pk}/")
        loaded = browser.execute_script(
            "return [document.title, typeof htmx, performance.getEntriesByType("
            "'resource').map(e => [e.name, e.responseStatus])]"
        )
        assert loaded[:2] == ["Annual report", "object"], loaded
        wait = WebDriverWait(browser, 30, poll_frequency=0.1)
        progress_text = shown_on(browser, ".qsignals-progress")
        assert wait.until(lambda d: progress_text(d) == "40% pages")
        handler = browser.find_element(By.CSS_SELECTOR, ".qsignals-handler").text
        assert handler == "render_pages"
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            browser.find_element(By.TAG_NAME, "main").screenshot(
                str(Path(SCREENSHOTS) / "status-fragment.png")
            )
        shown[0].set()
        assert wait.until(lambda d: progress_text(d) == "80% pages")
        shown[1].set()
        idle = shown_on(browser, ".qsignals-idle")
        assert wait.until(lambda d: idle(d) == "")
        assert browser.find_elements(By.CSS_SELECTOR, ".qsignals-call") == []
        assert browser.find_elements(By.CSS_SELECTOR, "[hx-get]") == []
    finally:
        for event in shown:
            event.set()
        worker.join()
