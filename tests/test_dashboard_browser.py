"""The dashboard in a real browser: Debian's headless ``chromium`` driven by Selenium through
``chromedriver``, against the project of ``harness/dashboard_site.py`` served by gunicorn
(2 worker processes) on a throwaway PostgreSQL.

The page must refuse a non-staff user, render for staff, update live (the in-use count
rises while the test holds connections through the site), and show a held connection's
and a long hold's stack on click. A screenshot is saved under the test's temp directory
(its path printed); with ``LIDO_DASHBOARD_SCREENSHOT=1`` it is also copied to
``docs/img/dashboard.png``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.dashboard_site import PASSWORD, SECRET_LITERAL, SECRET_PARAM, GunicornServer, make_site

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are needed (scripts/setup.sh installs them)",
)

HOLDERS = 3
HOLD_SECONDS = 25  # long enough for every test below; the site's leak_threshold is 1 s
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """``probe()``'s first truthy answer, polled until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with_error = None
        try:
            got = probe()
            if got:
                return got
        except WebDriverException as exc:  # an element replaced while read
            with_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} ({with_error!r})")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    root = make_site(
        pg, tmp_path_factory.mktemp("dashsite"), dbname="lido_dash_browser",
        pool={"max_size": 6, "leak_threshold": 1.0, "idle_in_transaction_threshold": 2.0},
    )  # fmt: skip
    with GunicornServer(root, workers=2, threads=HOLDERS + 3) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2000", "--hide-scrollbars"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def holders(server: GunicornServer) -> Iterator[list[threading.Thread]]:
    """Not started: the live test starts them. Joined (bounded) at the end of the module."""
    threads = [
        threading.Thread(target=_get, args=(server.port, f"/hold?s={HOLD_SECONDS}"), daemon=True)
        for _ in range(HOLDERS)
    ]
    yield threads
    for t in threads:
        if t.is_alive() or t.ident is not None:
            t.join(HOLD_SECONDS + 15)


def _get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HOLD_SECONDS + 10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return json.loads(resp.read())
    finally:
        conn.close()


def sign_in(driver: Any, server: GunicornServer, username: str) -> None:
    driver.delete_all_cookies()
    driver.get(server.url("/lido/"))
    assert "/accounts/login/" in driver.current_url, driver.current_url
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()


def text(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def click_first(driver: Any, css: str, timeout: float = 15.0) -> None:
    """Clicks the first element matching ``css``, again if the page redrew it meanwhile
    (the tables are redrawn at each poll)."""

    def attempt() -> bool | None:
        rows = driver.find_elements(By.CSS_SELECTOR, css)
        if not rows:
            return None
        rows[0].click()
        return True

    wait_for(f"a click on {css}", attempt, timeout)


def shown_detail(driver: Any) -> Any:
    def probe() -> Any:
        panel = driver.find_element(By.ID, "detail")
        return panel if panel.is_displayed() else None

    return wait_for("the detail panel", probe)


def test_non_staff_user_is_refused(browser: Any, server: GunicornServer) -> None:
    sign_in(browser, server, "plain")
    wait_for("the 403 page", lambda: "403" in browser.page_source)
    assert "/lido/" in browser.current_url
    assert not browser.find_elements(By.ID, "connections")
    browser.get(server.url("/lido/snapshot.json"))
    assert "403" in browser.page_source


def test_staff_dashboard_renders_and_updates_live(
    browser: Any, server: GunicornServer, holders: list[threading.Thread]
) -> None:
    # Both workers take a connection once, so that both have a pool to publish.
    pids = {_get(server.port, "/pid")["pid"] for _ in range(40)}
    sign_in(browser, server, "staff")
    wait_for("the dashboard to go live", lambda: text(browser, "status").startswith("live"))
    assert browser.find_element(By.ID, "pools").find_elements(By.CSS_SELECTOR, "tbody tr")
    # At rest only the page's own poll holds a connection (sessions are in the database);
    # a worker's record may still show its /pid requests for a few seconds.
    settled = wait_for(
        "in use to settle", lambda: (n := int(text(browser, "total-in-use"))) <= 1 and str(n)
    )
    before = int(settled)
    for t in holders:
        t.start()
    seen: list[int] = []

    def risen() -> int | None:
        seen.append(int(text(browser, "total-in-use")))
        return seen[-1] if seen[-1] >= before + HOLDERS else None

    try:
        after = wait_for(f"in use to rise by {HOLDERS} from {before}", risen)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; seen: {seen[-20:]}") from None
    assert after >= before + HOLDERS
    # Every process with a pool appears (2 when both workers answered /pid).
    shown = wait_for(
        f"{len(pids)} processes",
        lambda: (n := int(text(browser, "process-count"))) >= len(pids) and n,
    )
    assert shown >= len(pids)
    # Drawn, not just counted: the occupancy chart has an area for connections in use.
    assert browser.find_elements(By.CSS_SELECTOR, "#occupancy svg path")
    page = browser.page_source
    assert SECRET_PARAM not in page and SECRET_LITERAL not in page


def test_held_connection_shows_its_stack_on_click(browser: Any) -> None:
    click_first(browser, "#connections tbody tr")
    detail = shown_detail(browser)
    assert "Connection #" in detail.text
    stacks = detail.find_elements(By.CSS_SELECTOR, "pre.stack")
    assert stacks, "a held connection's detail shows the stack that took it"
    assert "hold_connection_for_dashboard" in stacks[0].text


def test_long_hold_report_shows_its_stack_on_click(browser: Any) -> None:
    click_first(browser, "#leaks tbody tr.kind-long_hold")
    detail = shown_detail(browser)
    assert "held too long" in detail.text
    stack = detail.find_element(By.CSS_SELECTOR, "pre.stack")
    assert "hold_connection_for_dashboard" in stack.text


def test_idle_transaction_report_shows_both_stacks_on_click(browser: Any) -> None:
    click_first(browser, "#leaks tbody tr.kind-idle_in_transaction")
    detail = shown_detail(browser)
    wait_for("the idle transaction's detail", lambda: "idle in transaction" in detail.text)
    taken, began = detail.find_elements(By.CSS_SELECTOR, "pre.stack")
    assert "hold_connection_for_dashboard" in taken.text
    assert "hold_connection_for_dashboard" in began.text
    assert "SELECT count(*) FROM auth_user" in detail.text  # the last statement's shape


def test_leak_report_shows_its_stack_on_click(browser: Any, server: GunicornServer) -> None:
    _get(server.port, "/leak")
    click_first(browser, "#leaks tbody tr.kind-leak")
    detail = shown_detail(browser)
    wait_for("the leak's detail", lambda: "leaked" in detail.text)
    stack = detail.find_element(By.CSS_SELECTOR, "pre.stack")
    assert "leak_connection_for_dashboard" in stack.text


def test_screenshot(browser: Any, server: GunicornServer, tmp_path: Path) -> None:
    # Shown with connections held and, when there is one, a stack open.
    if not browser.find_elements(By.ID, "detail"):
        sign_in(browser, server, "staff")
        wait_for("the dashboard to go live", lambda: text(browser, "status").startswith("live"))
    if not browser.find_element(By.ID, "detail").is_displayed():
        with contextlib.suppress(AssertionError):
            click_first(browser, "#connections tbody tr", timeout=3)
    time.sleep(1.5)  # two more polls: the charts have a few points
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1000, min(int(height) + 40, 4000)))
    path = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    print(f"dashboard screenshot: {path}")
    if os.environ.get("LIDO_DASHBOARD_SCREENSHOT"):
        dest = ROOT / "docs" / "img" / "dashboard.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        print(f"copied to {dest}")


def test_reset_statement_statistics_on_every_process(browser: Any) -> None:
    def hold_shape_rows() -> list[Any]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#queries tbody td.sql")
        return [r for r in rows if "OR username" in r.text]

    wait_for("the hold view's statement among the top statements", hold_shape_rows)
    browser.find_element(By.ID, "reset-queries").click()
    wait_for("the reset to be accepted", lambda: text(browser, "reset-result") == "asked")
    # Both workers ran that statement; each drops it at its next publishing tick.
    wait_for("the statement to leave the table", lambda: not hold_shape_rows())
