"""Debian's Chromium, driven headless by Playwright (never a downloaded browser), with a
screenshot of the page in `test-artifacts/` when a test fails."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium; skips (a failure under PARLEY_REQUIRE_SERVICES) when it isn't installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    playwright: Playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def page_for(browser: Browser, request: pytest.FixtureRequest, **context_options: Any) -> Iterator[Page]:
    """A page in a fresh browser context (its own storage); screenshot and console log on failure."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    failed_before = request.session.testsfailed
    try:
        yield page
    except BaseException:  # used inside a test body: its failure passes through here
        _save(page, request, console)
        raise
    else:
        # As a fixture: the call's report is logged before teardown, so a rise is this test failing.
        if request.session.testsfailed > failed_before:
            _save(page, request, console)
    finally:
        context.close()


def _save(page: Page, request: pytest.FixtureRequest, console: list[str]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    with contextlib.suppress(Exception):
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(console))
