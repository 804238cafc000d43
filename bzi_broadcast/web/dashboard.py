"""The delivery dashboard: progress, rate and ETA, sends over time, failures, channel health."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
