"""Colour contrast after WCAG 2: the organisation's accent colour, made readable on a background.

The accent colour is configured once (``organisation.accent_color``); the newsletter uses it for
headings and links on white and, in dark mode, on a near-black background, where a dark accent would
disappear. ``readable_on`` moves it towards white (or black) just far enough to reach the ratio.
"""

from __future__ import annotations

AA_TEXT = 4.5  # WCAG 2 level AA for body text
_STEP = 0.05  # how far each try moves towards white or black


def _channels(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _linear(channel: int) -> float:
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def luminance(colour: str) -> float:
    """Relative luminance of ``#rrggbb``: 0 for black, 1 for white."""
    r, g, b = (_linear(c) for c in _channels(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two ``#rrggbb`` colours, from 1 to 21."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _mix(colour: str, towards: str, share: float) -> str:
    pairs = zip(_channels(colour), _channels(towards), strict=True)
    return "#" + "".join(f"{round(c + (t - c) * share):02x}" for c, t in pairs)


def readable_on(colour: str, background: str, ratio: float = AA_TEXT) -> str:
    """``colour`` itself when it reaches ``ratio`` on ``background``; otherwise the first mix
    towards white (on a dark background) or black (on a light one) that does."""
    towards = "#ffffff" if luminance(background) < 0.18 else "#000000"
    share = 0.0
    candidate = colour.lower()
    while contrast(candidate, background) < ratio and share < 1:
        share = min(1.0, share + _STEP)
        candidate = _mix(colour, towards, share)
    return candidate
