"""Every part that adds routes to the web app, in order."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from bzi_broadcast.web import (
    admin,
    api,
    archive,
    dashboard,
    editor,
    operations,
    people,
    public,
    staff_users,
)

SETUPS: list[Callable[[web.Application], None]] = [
    operations.setup,
    public.setup,
    archive.setup,
    admin.setup,
    staff_users.setup,
    editor.setup,
    dashboard.setup,
    people.setup,
    api.setup,
]
