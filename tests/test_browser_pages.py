"""The subscriber's pages in headless Chromium with JavaScript off, at phone width: sign up
(a mistake first), confirm from the mail, nothing scrolls sideways. Screenshots go to
``artifacts/``. With CI=true a missing browser fails the test instead of skipping it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from bzi_broadcast.service import Service
from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import ARTIFACTS, require_or_skip
from .test_delivery import serving, settings_for, wait_until

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser


async def test_sign_up_and_confirm_without_javascript_on_a_phone(database_url: str) -> None:
    require_or_skip(CHROMIUM.exists() and shutil.which("chromium") is not None, "/usr/bin/chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as base,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"]
        )
        try:
            context = await browser.new_context(
                java_script_enabled=False,
                viewport={"width": 375, "height": 800},
                locale="de-DE",  # the page follows the browser's language
            )
            page = await context.new_page()
            await page.goto(f"{base}/anmelden")
            await page.get_by_label("E-Mail-Adresse").fill("anna@example.org")
            await page.get_by_label("Veranstaltungen").check()
            await page.screenshot(path=str(ARTIFACTS / "anmelden-375px.png"), full_page=True)
            await page.get_by_role("button", name="Anmelden").click()
            assert await page.get_by_text("Ohne Ihre Einwilligung").is_visible()
            assert await page.get_by_label("E-Mail-Adresse").input_value() == "anna@example.org"
            assert await page.get_by_label("Veranstaltungen").is_checked()
            await page.screenshot(path=str(ARTIFACTS / "anmelden-fehler-375px.png"), full_page=True)
            await page.get_by_label("Ich möchte den Newsletter").check()
            await page.get_by_role("button", name="Anmelden").click()
            assert await page.get_by_role("heading", name="Fast geschafft").is_visible()

            async def link() -> str | None:
                for received in smtp.received:
                    body = received.message().get_body(("plain",))
                    text = body.get_content() if body is not None else ""
                    found = re.search(r"/bestaetigen/[A-Za-z0-9._-]+", text)
                    if found:
                        return found.group(0)
                return None

            path = await wait_until(link, timeout=20)
            assert path is not None
            await page.goto(base + path)
            await page.get_by_role("button", name="Ja, Newsletter erhalten").click()
            assert await page.get_by_role("heading", name="Anmeldung bestätigt").is_visible()
            await page.screenshot(path=str(ARTIFACTS / "bestaetigt-375px.png"), full_page=True)
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375
        finally:
            await browser.close()
