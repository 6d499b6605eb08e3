"""The browser client and the demo page in Debian's headless Chromium, driven by Playwright.

The page is loaded through a TCP proxy so a test can cut the connection; every test checks the
page's transcript: the text streamed equals the message, and the event indices it showed are
0, 1, 2, ... with none repeated or missing, across a reload, a cut, a 503 outage or going
offline. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxy import TCPProxy
from tests.servers import ROOT, ServerProcess

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
WORDS = 40
MESSAGE = " ".join(f"chunk{i:02d}" for i in range(WORDS))
DELAY = 0.08  # seconds per word: the run takes about 3 s
KEY = "browser-test-key"


def _need_browser() -> Any:
    """Outside CI a machine without Chromium or Playwright skips; in CI that is a failure."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed (pip install playwright)"
        sync_playwright = None
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("browser"), delay=DELAY) as srv:
        yield srv


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        tmp_path_factory.mktemp("browser-secured"), delay=DELAY, security_key=KEY
    ) as srv:
        yield srv


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def start_run(page: Any, url: str, component: str = "agents/echo", key: str = "") -> None:
    page.goto(url + "/")
    page.wait_for_function("() => window.agentosDemo !== undefined")
    if key:
        page.fill("#key", key)
    page.select_option("#component", component)
    page.fill("#message", MESSAGE)
    page.click("#send")
    page.wait_for_function("() => window.agentosDemo.transcript.runId !== null")


def wait_for_events(page: Any, count: int) -> int:
    page.wait_for_function(f"() => window.agentosDemo.transcript.indices.length >= {count}")
    seen: int = page.evaluate("() => window.agentosDemo.transcript.indices.length")
    assert seen < WORDS, "the run ended before the disturbance; make it slower"
    return seen


def finished_transcript(page: Any) -> dict[str, Any]:
    page.wait_for_function(
        "() => ['COMPLETED', 'ERROR', 'CANCELLED'].includes("
        "document.querySelector('#status').textContent)"
    )
    transcript: dict[str, Any] = page.evaluate("() => window.agentosDemo.transcript")
    assert page.text_content("#status") == "COMPLETED", page.text_content("#error")
    return transcript


def assert_exactly_once(page: Any, transcript: dict[str, Any]) -> None:
    indices = transcript["indices"]
    assert indices == list(range(len(indices))), f"repeated or missing events: {indices}"
    # RunStarted, one RunContent per word, RunCompleted.
    assert len(indices) == WORDS + 2
    assert transcript["text"] == MESSAGE
    assert page.text_content("#output") == MESSAGE
    assert page.text_content("#final") == MESSAGE
    assert page.text_content("#event-index") == str(WORDS + 1)


def assert_reconnected(transcript: dict[str, Any]) -> None:
    """A second connection caught up (run still going) or replayed (run over by then)."""
    starts = [m for m in transcript["meta"] if m.startswith(("catch_up", "replay"))]
    assert len(starts) >= 2, transcript["meta"]


def test_page_streams_a_run(page: Any, server: ServerProcess) -> None:
    start_run(page, server.url)
    transcript = finished_transcript(page)
    assert_exactly_once(page, transcript)
    assert transcript["meta"][0].startswith("catch_up")


@pytest.mark.parametrize(
    ("component", "marker"),
    [("teams/echo-team", "B: chunk00"), ("workflows/echo-workflow", "Reviewed: chunk00")],
)
def test_page_streams_teams_and_workflows(
    page: Any, server: ServerProcess, component: str, marker: str
) -> None:
    start_run(page, server.url, component)
    page.wait_for_function(
        "() => ['COMPLETED', 'ERROR', 'CANCELLED'].includes("
        "document.querySelector('#status').textContent)",
        timeout=45_000,
    )
    transcript = page.evaluate("() => window.agentosDemo.transcript")
    assert page.text_content("#status") == "COMPLETED"
    assert transcript["indices"] == list(range(len(transcript["indices"])))
    assert marker in transcript["text"]


def test_reload_mid_stream(page: Any, server: ServerProcess) -> None:
    start_run(page, server.url)
    before = wait_for_events(page, 8)
    page.reload()
    transcript = finished_transcript(page)
    assert_exactly_once(page, transcript)
    # The reloaded page resumed the run while it was still running.
    catch_ups = [m for m in transcript["meta"] if m.startswith("catch_up")]
    assert len(catch_ups) >= 2, transcript["meta"]
    assert catch_ups[-1] == "catch_up RUNNING", transcript["meta"]
    assert before < len(transcript["indices"])


def test_proxy_cut_mid_stream(page: Any, server: ServerProcess) -> None:
    with TCPProxy(server.port) as proxy:
        start_run(page, proxy.url)
        wait_for_events(page, 6)
        assert proxy.cut() >= 1
        transcript = finished_transcript(page)
    assert_exactly_once(page, transcript)
    assert_reconnected(transcript)


def test_reload_then_cut(page: Any, server: ServerProcess) -> None:
    """After a reload the stream URL carries the cursor, so the browser's own reconnect asks for
    events the page already has again: the client must drop them."""
    with TCPProxy(server.port) as proxy:
        start_run(page, proxy.url)
        wait_for_events(page, 4)
        page.reload()
        page.wait_for_function("() => window.agentosDemo.transcript.indices.length >= 10")
        assert proxy.cut() >= 1
        transcript = finished_transcript(page)
    assert_exactly_once(page, transcript)
    assert_reconnected(transcript)


def test_503_outage_mid_stream(page: Any, server: ServerProcess) -> None:
    with TCPProxy(server.port) as proxy:
        start_run(page, proxy.url)
        wait_for_events(page, 6)
        proxy.set_mode("503")
        proxy.cut()
        # An EventSource gives up on a 503; the follower must probe and come back on its own.
        deadline = time.monotonic() + 10
        while proxy.answered_503 < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.answered_503 >= 2
        proxy.set_mode("forward")
        transcript = finished_transcript(page)
    assert_exactly_once(page, transcript)
    assert_reconnected(transcript)


def test_offline_then_online_mid_stream(page: Any, server: ServerProcess) -> None:
    with TCPProxy(server.port) as proxy:
        start_run(page, proxy.url)
        wait_for_events(page, 6)
        page.context.set_offline(True)
        proxy.cut()  # going offline drops the open connection too
        page.wait_for_timeout(1000)
        page.context.set_offline(False)
        transcript = finished_transcript(page)
    assert_exactly_once(page, transcript)
    assert_reconnected(transcript)


def test_security_key_with_reload(page: Any, secured: ServerProcess) -> None:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    start_run(page, secured.url, key=KEY)
    wait_for_events(page, 8)
    page.reload()  # the key field is empty now: only the run's resume token is left
    assert page.input_value("#key") == ""
    transcript = finished_transcript(page)
    assert_exactly_once(page, transcript)
    resumes = [u for u in urls if "/resume" in u]
    assert len(resumes) >= 2
    assert all("token=" in u for u in resumes)
    assert not any(KEY in u for u in urls), "the security key must never be in a URL"


def test_secured_server_refuses_a_page_without_the_key(page: Any, secured: ServerProcess) -> None:
    page.goto(secured.url + "/")
    page.fill("#message", "no key")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('#error').textContent !== ''")
    assert "401" in page.text_content("#error")
