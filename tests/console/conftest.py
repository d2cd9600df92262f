"""Headless Chromium from Debian's `chromium` package, driven by Playwright (no browser
download: `executable_path`). A missing Chromium fails the tests with the package to
install (scripts/test installs it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from tests.cameras.conftest import h264_clip, rtsp_server, rtsp_server_process

__all__ = ["h264_clip", "rtsp_server", "rtsp_server_process"]

CHROMIUM = os.environ.get("VIGIE_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """Where screenshots go: $VIGIE_ARTIFACTS, else var/artifacts/ (ignored by git)."""
    path = Path(os.environ.get("VIGIE_ARTIFACTS") or ROOT / "var" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def chromium() -> str:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test installs "
                    "it)", pytrace=False)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    args: list[str] = ["--disable-gpu", "--disable-dev-shm-usage"]
    if os.getuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


def collect_errors(page: Any) -> list[str]:
    """Console errors and uncaught exceptions of a page (CSP violations show up here)."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        # An HTTP error the page handles (401 at login, 404 for a camera without a picture
        # yet) is logged by Chromium as "Failed to load resource": not the page's fault.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors
