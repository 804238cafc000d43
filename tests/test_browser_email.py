"""The newsletter HTML in real headless Chromium: it holds at 1024 px and at 375 px.

Screenshots are kept in ``artifacts/`` for review. Needs Debian's ``chromium``; with CI=true a
missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from bzi_broadcast.content import Announcement
from bzi_broadcast.render import Renderer

from .conftest import ARTIFACTS, require_or_skip

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_or_skip(CHROMIUM.exists() and shutil.which("chromium") is not None, "/usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.parametrize("width", [375, 1024])
def test_email_fits_the_viewport(
    browser: Browser, renderer: Renderer, example: Announcement, width: int
) -> None:
    html = renderer.email(example).html
    page = browser.new_page(viewport={"width": width, "height": 800})
    try:
        page.set_content(html, wait_until="load")
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        client_width = page.evaluate("document.documentElement.clientWidth")
        assert scroll_width <= client_width, f"horizontal scroll at {width}px"
        container = page.locator("table.container").bounding_box()
        assert container is not None
        assert container["width"] <= min(width, 600)
        assert page.get_by_text("Mittwoch, 5. November 2025").first.is_visible()
        assert page.locator("a", has_text="Abmelden").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"email-{width}px.png"), full_page=True)
    finally:
        page.close()
