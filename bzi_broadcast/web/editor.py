"""The announcement editor: forms for every block, live previews, the four-eyes steps."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
