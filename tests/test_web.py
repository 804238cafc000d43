"""The web server inside ``serve``: health, security headers, language choice, no tracebacks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bzi_broadcast.service import Service
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.web import routes

from .test_delivery import METRICS_AUTH, serving, settings_for


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[tuple[Service, str]]:
    async with SmtpCapture() as smtp:
        service = Service(settings_for(database_url, smtp.port))
        async with serving(service) as base:
            yield service, base


async def test_health_and_security_headers(served: tuple[Service, str]) -> None:
    _service, base = served
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as answer:
        assert answer.status == 200
        assert await answer.json() == {"status": "ok"}
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


async def test_an_unexpected_error_is_a_short_page_in_the_chosen_language(
    database_url: str,
) -> None:
    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    def setup(app: web.Application) -> None:
        app.router.add_get("/kaputt", broken)

    smtp = await SmtpCapture().start()
    routes.SETUPS.append(setup)
    try:
        service = Service(settings_for(database_url, smtp.port))
    finally:
        routes.SETUPS.remove(setup)
    try:
        async with serving(service) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/kaputt") as answer:
                text = await answer.text()
                assert answer.status == 500
                assert "interner Fehler" in text
                assert "secret internal detail" not in text
                assert "Traceback" not in text
            async with http.get(f"{base}/kaputt?lang=en") as answer:
                assert "internal error" in await answer.text()
                assert answer.cookies["lang"].value == "en"
    finally:
        await smtp.stop()


async def test_ready_reports_the_database_and_channel_health_and_metrics_count_rows(
    served: tuple[Service, str],
) -> None:
    from bzi_broadcast.delivery import control

    service, base = served
    await control.set_paused(service.engine, "mastodon", True, "Mastodon muss neu verbunden werden")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/readyz") as answer:
            body = await answer.json()
            assert answer.status == 200
        async with http.get(f"{base}/metrics", headers=METRICS_AUTH) as answer:
            metrics = await answer.text()
    assert body["migrations"] == "current"
    assert body["channels"]["mastodon"]["reason"] == "Mastodon muss neu verbunden werden"
    assert 'bzi_channel_paused{channel="mastodon"} 1' in metrics
    assert "# TYPE bzi_deliveries gauge" in metrics
