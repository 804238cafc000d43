"""The newsletter's HTML part in real headless Chromium at 600 and 375 px, light and dark, with and
without its <style> block (some clients strip it): no horizontal scroll even with a long
unbreakable word and URL, pictures within the column, and text that contrasts with what is behind
it (WCAG AA, 4.5 : 1) in either colour scheme — read from the computed styles, and, where
Chromium forces dark mode on the page as some mail apps do, measured on the screenshot's pixels.

Screenshots go to the test's tmp_path. Needs Debian's ``chromium``; with CI=true a missing browser
fails the test instead of skipping it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, sync_playwright

from bzi_broadcast.content import Announcement, parse_announcement
from bzi_broadcast.content.model import BLOCK_TYPES
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.colours import AA_TEXT, contrast, luminance

from .conftest import require_or_skip
from .pictures import png
from .test_golden import BLOCKS

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser

LONG_WORD = "Integrationsbeiratsgeschäftsordnungsänderungsbeschlussvorlagenentwurfsfassung" * 2
LONG_URL = "https://bzi.example.org/dokumente/" + "regionalkonferenz-potsdam-" * 8 + "protokoll.pdf"
PICTURE_URL = "https://bzi.example.org/medien/sommerfest.png"
PICTURE = png(width=1200, height=675)
_STYLE = re.compile(r"<style\b.*?</style>", re.S | re.I)
_RGB = re.compile(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)")

# The contrast an element's screenshot shows: the commonest pixel is the background, the pixel
# that differs most from it is the text (glyph cores reach the text colour at these sizes).
_PICTURE_CONTRAST_JS = """
async png => {
  const image = new Image();
  image.src = "data:image/png;base64," + png;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, image.width, image.height).data;
  const lum = (r, g, b) => [r, g, b].map(v => v / 255)
    .map(c => c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4)
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const counts = new Map();
  for (let i = 0; i < data.length; i += 4) {
    const key = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  const [background] = [...counts.entries()].reduce((a, b) => (b[1] > a[1] ? b : a));
  const bg = lum(background >> 16, (background >> 8) & 255, background & 255);
  let best = 1;
  for (const key of counts.keys()) {
    const l = lum(key >> 16, (key >> 8) & 255, key & 255);
    best = Math.max(best, (Math.max(l, bg) + 0.05) / (Math.min(l, bg) + 0.05));
  }
  return best;
}
"""

# Text elements to check, each with the colour of its text and of the nearest painted background.
_COLOURS_JS = """
selectors => selectors.flatMap(selector => {
  const element = document.querySelector(selector);
  if (!element) return [[selector, null, null]];
  const colour = getComputedStyle(element).color;
  let node = element, background = null;
  while (node && node.nodeType === 1) {
    const value = getComputedStyle(node).backgroundColor;
    if (!/rgba\\(\\d+, \\d+, \\d+, 0\\)|transparent/.test(value)) { background = value; break; }
    node = node.parentElement;
  }
  return [[selector, colour, background]];
})
"""
TEXT_SELECTORS = (
    ".header",
    "h1",
    "h2",
    ".lead",
    ".meta",
    ".content li",
    ".quote-text",
    ".role",
    ".content a:not(.button-link)",
    ".button-link",
    ".footer p",
    ".footer a",
)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    require_or_skip(CHROMIUM.exists() and shutil.which("chromium") is not None, "/usr/bin/chromium")
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def forcing_browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium darkening every page itself, whatever colours the page asks for — as mail apps
    that force dark mode do (each with its own algorithm; this is Chromium's)."""
    args = ["--no-sandbox", "--blink-settings=forceDarkModeEnabled=true"]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    yield browser
    browser.close()


def every_block(language: str = "de", *extra: dict[str, object], **fields: object) -> Announcement:
    """A newsletter with each block type once (fully filled in, as in the golden tests)."""
    blocks = [BLOCKS[block_type][language] for block_type in BLOCK_TYPES]
    data = {
        "title": "Nachrichten aus dem Rat: Sommerfest, Stimmen und Dank",
        "language": language,
        "summary": "Was im Juli im Rat geschah und wer es möglich gemacht hat.",
        "blocks": [*blocks, *extra],
        **fields,
    }
    return parse_announcement(json.dumps(data, ensure_ascii=False), fmt="json")


def long_strings() -> Announcement:
    """Every block type, a picture wider than the column, a long word and a long bare URL."""
    text: dict[str, object] = {"type": "text", "text": f"{LONG_WORD}\n\nDas Protokoll: {LONG_URL}"}
    image = {"src": PICTURE_URL, "alt": "Gäste auf dem Rathausplatz", "width": 1200, "height": 675}
    return every_block("de", text, image=image, link=LONG_URL)


@pytest.fixture(scope="module")
def newsletter(renderer: Renderer) -> str:
    html = renderer.email(long_strings()).html
    assert LONG_WORD in html and LONG_URL in html
    return html


def _hex(css: str) -> str:
    match = _RGB.fullmatch(css)
    assert match, f"unexpected colour {css!r}"
    assert match[4] in (None, "1"), f"translucent colour {css!r}"
    return "#" + "".join(f"{int(match[i]):02x}" for i in (1, 2, 3))


def _serve_picture(route: Route) -> None:
    route.fulfill(status=200, content_type="image/png", body=PICTURE)


def open_newsletter(browser: Browser, html: str, width: int, scheme: str) -> Page:
    page = browser.new_page(
        viewport={"width": width, "height": 900},
        color_scheme="dark" if scheme == "dark" else "light",
    )
    page.route(PICTURE_URL, _serve_picture)  # the only request; nothing leaves the machine
    page.set_content(html, wait_until="load")
    return page


def test_the_css_is_inlined_and_outlook_keeps_its_fixed_width(newsletter: str) -> None:
    head, _, body = newsletter.partition("<body")
    assert 'name="color-scheme" content="light dark"' in head
    assert 'name="supported-color-schemes" content="light dark"' in head
    assert "prefers-color-scheme: dark" in head
    container = re.search(r'<table class="container"[^>]*>', body)
    assert container and "max-width: 600px" in container[0] and "width: 100%" in container[0]
    assert "<!--[if mso]>" in body  # the 600 px frame only Outlook on Windows sees
    assert "overflow-wrap: anywhere" in body
    preheader = re.search(r'<div class="preheader"[^>]*>', body)
    assert preheader and "display: none" in preheader[0]
    assert (
        "color" not in preheader[0]
    )  # hidden text in white reads as spam (HTML_FONT_LOW_CONTRAST)


@pytest.mark.parametrize("style", ["kept", "stripped"])
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [375, 600])
def test_the_layout_holds(
    browser: Browser, newsletter: str, tmp_path: Path, width: int, scheme: str, style: str
) -> None:
    html = newsletter if style == "kept" else _STYLE.sub("", newsletter)
    assert style == "kept" or "<style" not in html
    page = open_newsletter(browser, html, width, scheme)
    try:
        page.screenshot(
            path=str(tmp_path / f"email-{width}px-{scheme}-{style}.png"), full_page=True
        )
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, f"horizontal scroll: {scroll_width} px in {width} px"
        container = page.locator("table.container").bounding_box()
        picture = page.locator("img.hero").bounding_box()
        assert container and picture
        assert container["width"] <= min(width, 600)
        assert picture["x"] + picture["width"] <= container["x"] + container["width"]
        assert picture["width"] / picture["height"] == pytest.approx(1200 / 675, rel=0.02)
        assert page.get_by_text(LONG_URL).first.is_visible()
        assert page.locator("a", has_text="Abmelden").is_visible()
    finally:
        page.close()


@pytest.mark.parametrize("style", ["kept", "stripped"])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrasts_with_its_background(
    browser: Browser, newsletter: str, scheme: str, style: str
) -> None:
    html = newsletter if style == "kept" else _STYLE.sub("", newsletter)
    page = open_newsletter(browser, html, 375, scheme)
    try:
        found = page.evaluate(_COLOURS_JS, list(TEXT_SELECTORS))
        body = _hex(page.evaluate("getComputedStyle(document.body).backgroundColor"))
    finally:
        page.close()
    poor = {}
    for selector, colour, background in found:
        assert colour and background, f"{selector}: no element or no painted background"
        ratio = contrast(_hex(colour), _hex(background))
        if ratio < AA_TEXT:
            poor[selector] = f"{colour} on {background}: {ratio:.2f}"
    assert not poor, f"text below {AA_TEXT}:1 ({scheme}, style {style}): {poor}"
    # the dark pass is applied where the client keeps <style>; without it the light design stays
    dark = scheme == "dark" and style == "kept"
    assert (luminance(body) < 0.05) is dark, body


def without_colour_scheme(html: str) -> str:
    """The newsletter as a mail app sees it that ignores the colours it declares: no <style>,
    no color-scheme meta tags, no color-scheme on the root element."""
    html = _STYLE.sub("", html)
    html = re.sub(r'<meta name="(?:supported-)?color-schemes?"[^>]*>', "", html)
    html = re.sub(r"(?:supported-)?color-schemes?: [^;\"]*;?", "", html)
    assert "color-scheme" not in html
    return html


@pytest.mark.parametrize("declared", ["kept", "ignored"])
def test_readable_when_the_client_forces_dark(
    forcing_browser: Browser, newsletter: str, tmp_path: Path, declared: str
) -> None:
    html = newsletter if declared == "kept" else without_colour_scheme(newsletter)
    page = open_newsletter(forcing_browser, html, 375, "dark")
    try:
        page.screenshot(
            path=str(tmp_path / f"email-375px-forced-dark-{declared}.png"), full_page=True
        )
        body = _hex(page.evaluate("getComputedStyle(document.body).backgroundColor"))
        poor = {}
        for selector in TEXT_SELECTORS:
            picture = page.locator(selector).first.screenshot()
            ratio = page.evaluate(_PICTURE_CONTRAST_JS, base64.b64encode(picture).decode())
            if ratio < AA_TEXT:
                poor[selector] = round(ratio, 2)
    finally:
        page.close()
    assert not poor, f"text below {AA_TEXT}:1 on screen when dark is forced ({declared}): {poor}"
    # kept, the page's own dark palette is what shows; ignored, Chromium darkened the light page
    assert (luminance(body) < 0.05) is (declared == "kept"), body
