"""The REST API under /api/v1: bearer tokens, problem+json errors, the OpenAPI 3.1 document."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
