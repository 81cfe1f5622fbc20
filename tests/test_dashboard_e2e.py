"""End to end: `racequant dashboard` serves the app, headless Chromium loads it, the race card shows probabilities.

Drives Debian's /usr/bin/chromium through Playwright's Python package (never `playwright install`); `make test`
installs the chromium package when it is missing. The screenshot goes to test-artifacts/dashboard-race-card.png.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_fixtures import TrainedModel, trained_model  # noqa: F401  (the session fixture)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SCREENSHOT = ARTIFACTS / "dashboard-race-card.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 120
RENDER_TIMEOUT_MS = 180_000  # the first prediction loads the model and builds the card's features on a busy machine


def _chromium() -> Path:
    """Debian's chromium, installed here if absent and possible; skip only when it cannot be had."""
    if not CHROMIUM.exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            "apt-get update -qq && apt-get install -y -qq chromium",
            shell=True,
            check=False,
            capture_output=True,
            timeout=900,
        )
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent and could not be installed (apt-get install chromium needs root)")
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dashboard_url(trained_model: TrainedModel, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    port = _free_port()
    env = {**os.environ, "RACEQUANT_LOG_LEVEL": "WARNING"}
    env.pop("RACEQUANT_MODEL_VERSION", None)
    log = (tmp_path / "dashboard.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from racequant.cli import main; main()",
            "dashboard",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--db",
            str(trained_model.db),
            "--models-dir",
            str(trained_model.models_dir),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the dashboard did not listen on {port} within {START_TIMEOUT_S} s")
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(process.pid, 15)  # the CLI and its streamlit child
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
        log.close()


def test_race_card_renders_real_probabilities_in_headless_chromium(dashboard_url: str) -> None:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.goto(dashboard_url, wait_until="domcontentloaded", timeout=60_000)
            table = page.locator("[data-testid='stTable'] table")
            table.wait_for(state="visible", timeout=RENDER_TIMEOUT_MS)
            page.locator("[data-testid='stVegaLiteChart']").first.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(1500)  # let the charts finish drawing before the screenshot
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            headers = [h.strip() for h in table.locator("thead th").all_inner_texts()]
            win = headers.index("win")
            cells = [row.locator("th, td").nth(win).inner_text().strip() for row in table.locator("tbody tr").all()]
            body = page.inner_text("body")
        finally:
            browser.close()
    assert "Race card" in body and "Exception" not in body
    assert len(cells) >= 2 and all(re.fullmatch(r"0\.\d{3}", c) for c in cells), cells
    probabilities = [float(c) for c in cells]
    assert sum(probabilities) == pytest.approx(1.0, abs=0.02)
    assert SCREENSHOT.stat().st_size > 10_000
