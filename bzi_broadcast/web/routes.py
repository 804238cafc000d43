"""Every part that adds routes to the web app, in order."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from bzi_broadcast.web import admin, archive, operations, public

SETUPS: list[Callable[[web.Application], None]] = [
    operations.setup,
    public.setup,
    archive.setup,
    admin.setup,
]
