"""Shared fixtures: the seed example, a renderer with fixed organisation settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bzi_broadcast.config import Organisation, RenderSettings
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.render import Renderer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "weltoffene-kommunen.yaml"
ARTIFACTS = ROOT / "artifacts"
IN_CI = os.environ.get("CI", "").lower() == "true"

TEST_ORGANISATION = Organisation(
    name="Bundeszuwanderungs- und Integrationsrat (BZI)",
    short_name="BZI",
    website="https://bzi.example.org",
    impressum="Bundeszuwanderungs- und Integrationsrat (BZI)\nMusterstraße 1, 10115 Berlin",
    privacy_url="https://bzi.example.org/datenschutz",
    feed_domain="bzi.example.org",
)


@pytest.fixture(scope="session")
def example() -> Announcement:
    return load_announcement(EXAMPLE)


@pytest.fixture(scope="session")
def renderer() -> Renderer:
    return Renderer(RenderSettings(organisation=TEST_ORGANISATION))


def require_or_skip(available: bool, what: str) -> None:
    """Skip a test whose external part is missing, except under CI, where that is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required when CI=true")
    pytest.skip(f"{what} not available")
