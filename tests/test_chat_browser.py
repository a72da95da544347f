"""The chat page in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium), two pages on two gateway processes on loopback (mDNS on 127.0.0.1).

Skipped with the reason where /usr/bin/chromium or /usr/bin/chromedriver is missing; `make
test` installs them when run as root (the ``chromium`` target), so CI runs this. Every wait
polls the page's DOM with a deadline. ``CHAT_SCREENSHOT=path.png`` keeps a screenshot of the
first page (examples/chat_gateway/chat.png is one).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.chat_gateway.demo import wait_for_mesh
from examples.chat_gateway.processes import GatewayProcess, start_gateways

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]

pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: the "
                       "browser test needs Debian's chromium and chromium-driver (`make test` "
                       "installs them when run as root)"),
]

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

DEADLINE_S = 10.0
"""Longest wait for anything to show on a page (a killed gateway is declared dead in < 2 s)."""

POLL_S = 0.05

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1000,560")
"""Headless, and nothing that reaches for the network (this machine's is closed)."""


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Any]]:
    """Start Chromium instances, each with a fresh profile; all are quit at the end."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a thing
    drivers: list[Any] = []

    def start() -> Any:
        profile = tmp_path / f"profile-{len(drivers)}"
        options = Options()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        service = Service(CHROMEDRIVER, log_output=str(tmp_path / f"driver-{len(drivers)}.log"))
        driver = webdriver.Chrome(service=service, options=options)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()  # chromedriver ends its Chromium; Selenium then stops chromedriver
    for profile in tmp_path.glob("profile-*"):
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    started = start_gateways(2, cluster=f"chat-browser-{os.getpid()}",
                             options=["--ws-port", "0"], log_dir=tmp_path, prefix="br")
    try:
        yield started
    finally:
        for gateway in started:
            gateway.kill()


def until(driver: Any, what: str, condition: Callable[[], Any]) -> Any:
    """Poll ``condition`` until it is truthy; fail with ``what`` after ``DEADLINE_S``."""
    return WebDriverWait(driver, DEADLINE_S, poll_frequency=POLL_S).until(
        lambda _: condition(), message=f"no {what} within {DEADLINE_S} s")


def log_lines(driver: Any, kind: str) -> list[str]:
    """The text of the chat log's lines of one kind (speak, whisper, say, event, error)."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll('#log .line')]"
        ".filter(e => e.dataset.kind === arguments[0]).map(e => e.textContent)", kind))


def listed(driver: Any, list_id: str) -> dict[str, str]:
    """The side bar's ``users`` or ``rooms``: key -> the entry's text."""
    return dict(driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' li')]"
        ".map(e => [e.dataset.user || e.dataset.room, e.textContent])", list_id))


def type_line(driver: Any, text: str) -> None:
    field = driver.find_element(By.ID, "text")
    field.send_keys(text + Keys.ENTER)


def open_page(driver: Any, gateway: GatewayProcess, name: str) -> None:
    driver.get(gateway.page_url)
    driver.find_element(By.ID, "name").send_keys(name + Keys.ENTER)
    until(driver, f"{name} registered on {gateway.name}",
          lambda: driver.find_element(By.ID, "status").text
          == f"you are {name} on gateway {gateway.name}")


def test_two_pages_on_two_gateways_chat_set_a_status_and_see_a_killed_gateways_user_go(
        browser: Callable[[], Any], gateways: list[GatewayProcess]) -> None:
    g1, g2 = gateways
    wait_for_mesh_sync(gateways)
    ann, ben = browser(), browser()
    open_page(ann, g1, "ann")
    open_page(ben, g2, "ben")
    until(ann, "ben online on ann's page", lambda: "ben" in listed(ann, "users"))
    until(ben, "ann online on ben's page", lambda: "ann" in listed(ben, "users"))
    until(ann, "ben's gateway on ann's page", lambda: g2.name in listed(ann, "users")["ben"])

    type_line(ann, "hello ben")
    until(ben, "ann's speak", lambda: log_lines(ben, "speak") == ["annhello ben"])
    type_line(ben, "hi ann, from gateway 2")
    until(ann, "ben's speak", lambda: log_lines(ann, "speak") == ["benhi ann, from gateway 2"])
    type_line(ann, "/w ben <b>just you</b>")  # text, never markup
    until(ben, "ann's whisper",
          lambda: log_lines(ben, "whisper") == ["ann whispers:<b>just you</b>"])
    assert ben.find_elements(By.CSS_SELECTOR, "#log b") == []

    type_line(ann, "/join ops")
    until(ann, "ann in #ops", lambda: "ops" in listed(ann, "rooms"))
    type_line(ben, "/join ops")
    until(ann, "ben in ann's #ops", lambda: listed(ann, "rooms")["ops"] == "#ops ann, ben")
    type_line(ben, "/say ops deploy at 5?")
    for driver in (ann, ben):  # the sender's page gets it too: the room's echo
        until(driver, "ben's say in #ops",
              lambda d=driver: log_lines(d, "say") == ["#opsbendeploy at 5?"])
    assert log_lines(ann, "speak") == ["benhi ann, from gateway 2"]  # nothing twice

    # Status (Subscription.update_meta, told as SubscriberUpdated on every gateway).
    Select(ben.find_element(By.ID, "mystatus")).select_by_value("away")
    until(ann, "ben away on ann's page", lambda: listed(ann, "users")["ben"].endswith(" away"))
    ann.find_element(By.ID, "text").send_keys("typing a reply")  # no Enter yet
    until(ben, "ann typing on ben's page",
          lambda: listed(ben, "users")["ann"].endswith(" typing..."))
    ann.find_element(By.ID, "text").send_keys(Keys.ENTER)
    until(ben, "ann's reply", lambda: log_lines(ben, "speak")[-1:] == ["anntyping a reply"])
    until(ben, "ann no longer typing", lambda: listed(ben, "users")["ann"] == "ann br-1")
    assert listed(ann, "users")["ben"] == "ben br-2 away"  # still away
    assert log_lines(ann, "error") == log_lines(ben, "error") == []
    if shot := os.environ.get("CHAT_SCREENSHOT"):
        ann.save_screenshot(shot)

    g2.kill()  # SIGKILL, by PID: ben's gateway says goodbye to no one
    until(ann, "ben offline", lambda: "ben" not in listed(ann, "users"))
    until(ann, "ben left #ops", lambda: listed(ann, "rooms")["ops"] == "#ops ann")
    events = log_lines(ann, "event")
    assert "ben is offline" in events and "#ops: ben left" in events


def wait_for_mesh_sync(gateways: list[GatewayProcess]) -> None:
    import asyncio  # noqa: PLC0415

    asyncio.run(wait_for_mesh(gateways))
