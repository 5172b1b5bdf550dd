"""Headless Chromium for the report tests: offline, dialogs recorded instead of opened, full-page
screenshots into ``test-artifacts/`` (git-ignored)."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

ARTIFACTS = REPO / "test-artifacts"

CHROMIUM, CHROMEDRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)


def open_browser():
    pytest.importorskip("selenium", reason="selenium is not installed")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--window-size=1440,900",
        "--proxy-server=http://127.0.0.1:9",  # nothing listens there
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    # Record dialogs instead of opening them (a real one would block the page load); DevTools
    # scripts run before the page's own and are not subject to its CSP.
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_DIALOGS})
    return driver


RECORD_DIALOGS = """
window.__dialogs = [];
for (const kind of ["alert", "confirm", "prompt", "print"]) {
  window[kind] = (...args) => { window.__dialogs.push([kind, ...args.map(String)]); };
}
"""


def assert_loads_cleanly(driver, path: Path) -> None:
    """Every image decoded, and no script ran a dialog (an unrecorded one would raise here too)."""
    driver.get(path.as_uri())
    images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    assert images and all(complete and width > 0 for complete, width, _ in images), images
    assert driver.execute_script("return window.__dialogs") == []


def save_full_page_screenshot(driver, path: Path, height: float | None = None) -> Path:
    """The whole page (or its top ``height`` CSS pixels) as a PNG at ``path``."""
    width, full = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(height or full, full), "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
