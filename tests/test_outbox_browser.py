"""The outbox admin in a real browser: headless Chromium, driven by Selenium."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.db.models.signals import post_save
from django.test import override_settings

from django_q_signals.models import OutboxCall
from django_q_signals.worker import run_call
from tests.conftest import Connect, purge, queued_tasks, rolled_back
from tests.models import Article

if TYPE_CHECKING:
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
def server(transactional_db: None) -> Iterator[str]:
    """The project served on 127.0.0.1 by a thread of the test process: its URL.

    The thread never shares the test's database connections: each request
    opens its own, as in a deployment, and sees what the test committed.
    (pytest-django's ``live_server`` shares SQLite connections that are in
    memory when it starts, which can be before the test database exists; the
    request threads and the test then use one SQLite connection at once, and
    the process crashes.)
    """
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.db.backends.sqlite3.base import DatabaseWrapper as SQLite
    from django.test.testcases import LiveServerThread

    database = connections["default"]
    assert not (isinstance(database, SQLite) and database.is_in_memory_db()), (
        "the test database is in memory, where the server's connections cannot "
        "see it: give it a file (TEST NAME) in tests/settings.py"
    )
    thread = LiveServerThread("127.0.0.1", StaticFilesHandler, connections_override={})
    thread.daemon = True
    with override_settings(ALLOWED_HOSTS=["127.0.0.1"]):
        thread.start()
        thread.is_ready.wait()
        try:
            if thread.error:
                raise thread.error
            yield f"http://127.0.0.1:{thread.port}"
        finally:
            thread.terminate()


#: Waits beside the browser until the test process closes its stdin, as it
#: does when it has quit the browser or when it dies, then kills every process
#: still working in the browser's folder (chromedriver, Chromium and their
#: children, whatever process group they lead) and removes the folder.
REAPER = """
import os, shutil, signal, sys
folder = sys.argv[1]
sys.stdin.read()


def kill_all():
    killed = False
    for pid in os.listdir("/proc"):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == folder:
                os.kill(int(pid), signal.SIGKILL)
                killed = True
        except OSError:  # not a process, or gone, or a zombie
            pass
    return killed


while os.path.isdir("/proc") and kill_all():  # until none is left to start another
    pass
shutil.rmtree(folder, ignore_errors=True)
"""


@pytest.fixture
def browser(server: str) -> Iterator[WebDriver]:
    """Chromium in a folder of its own (profile, temporary files, configuration),
    quit before the server stops; then, however the test ends, even if the
    test process dies, nothing of it is left: no process, no file.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = os.path.realpath(tempfile.mkdtemp(prefix="qsignals-chromium-"))
    # In its own session: a Ctrl-C in the terminal does not stop it.
    reaper = subprocess.Popen(
        [sys.executable, "-c", REAPER, folder],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    assert reaper.stdin is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={folder}/profile",
        "--window-size=1400,900",
    ):
        options.add_argument(argument)
    # Chromium's temporary files and crash reports go in the folder too, not in
    # /tmp and ~/.config; its processes inherit the working directory, by which
    # the reaper finds them.
    env = {
        **os.environ,
        "TMPDIR": folder,
        "XDG_CONFIG_HOME": folder,
        "XDG_CACHE_HOME": folder,
    }
    service = Service(CHROMEDRIVER, env=env, popen_kw={"cwd": folder})
    try:
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.implicitly_wait(5)
            yield driver
        finally:
            driver.quit()
    finally:
        reaper.stdin.close()
        reaper.wait()


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
    server: str, browser: WebDriver
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    User.objects.create_superuser("admin", "admin@example.com", "secret")
    browser.get(f"{server}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("secret")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    browser.find_element(By.LINK_TEXT, "Outbox calls").click()

    def rows() -> list[list[str]]:
        return [
            [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")]
            for row in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        ]

    def opened(part_of_url: str, *, present: bool = True) -> None:
        """Wait for the page a click opens: its address has, or has not, this."""
        WebDriverWait(browser, 10).until(
            lambda browser: (part_of_url in browser.current_url) == present
        )

    assert len(rows()) == 3
    browser.find_element(By.LINK_TEXT, "Failed").click()
    opened("state__exact=failed")
    failed = rows()
    assert [row[1] for row in failed] == ["Failed", "Failed"]
    errors = browser.find_elements(By.CSS_SELECTOR, "td.field-last_error")
    assert {error.text for error in errors} == {
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
    opened("state__exact", present=False)
    browser.find_element(By.CSS_SELECTOR, "#result_list tbody input").click()
    Select(browser.find_element(By.NAME, "action")).select_by_visible_text("Discard")
    browser.find_element(By.NAME, "index").click()
    confirm = browser.find_element(By.CSS_SELECTOR, "input[value='Yes, discard them']")
    assert "Discard the selected outbox calls?" in browser.page_source
    screenshot(browser, "outbox-admin-discard")
    confirm.click()
    assert browser.find_element(By.CSS_SELECTOR, ".messagelist").text == (
        "Discarded 1 call(s)."
    )
    assert len(rows()) == 2
    screenshot(browser, "outbox-admin-after")


def test_the_server_sees_only_what_the_test_committed(
    server: str, browser: WebDriver
) -> None:
    """The server's requests have connections of their own, as in a deployment."""
    from selenium.webdriver.common.by import By

    with rolled_back():
        User.objects.create_superuser("admin", "admin@example.com", "secret")
        browser.get(f"{server}/admin/login/?next=/admin/")
        browser.find_element(By.NAME, "username").send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys("secret")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        error = browser.find_element(By.CSS_SELECTOR, ".errornote").text
    assert error.startswith("Please enter the correct username and password")
