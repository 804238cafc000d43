"""Subscribers and the audit log for staff: search, counts, growth, export, erase, consent proof."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
