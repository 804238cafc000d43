"""Every part that adds routes to the web app, in order."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

SETUPS: list[Callable[[web.Application], None]] = []
