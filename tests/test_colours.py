"""The accent colour made readable: WCAG contrast, and ``readable_on`` for any colour on the
newsletter's light and dark backgrounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bzi_broadcast.render.colours import AA_TEXT, contrast, readable_on

colours = st.integers(min_value=0, max_value=0xFFFFFF).map(lambda value: f"#{value:06x}")


def test_contrast_is_the_wcag_ratio() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21)
    assert contrast("#ffffff", "#ffffff") == pytest.approx(1)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)  # the known AA grey


def test_a_readable_colour_stays_as_it_is() -> None:
    assert readable_on("#00576B", "#ffffff") == "#00576b"


def test_the_default_accent_is_lightened_on_dark() -> None:
    lighter = readable_on("#00576b", "#1c2226")
    assert lighter != "#00576b"
    assert contrast(lighter, "#1c2226") >= AA_TEXT


@given(colour=colours, background=st.sampled_from(["#ffffff", "#1c2226", "#f2f4f5", "#111417"]))
def test_every_colour_becomes_readable(colour: str, background: str) -> None:
    assert contrast(readable_on(colour, background), background) >= AA_TEXT
