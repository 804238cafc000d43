"""The service's web server: public pages, archive and feed (admin and API join later).

Pages are rendered server-side from ``templates/pages/`` with the shared Jinja2 environment, in
German unless the visitor chose English (``?lang=en``, kept in a cookie) or their browser prefers
it. Every response carries strict security headers; an unexpected error is logged with its
traceback and shown as a short page, never as a traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Settings
from bzi_broadcast.i18n import DEFAULT_LOCALE, LOCALES, normalize_locale, use_locale
from bzi_broadcast.i18n import gettext as _
from bzi_broadcast.render import Renderer
from bzi_broadcast.tokens import TokenError, TokenSigner
from bzi_broadcast.web.forms import malformed_forms

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LANGUAGE_COOKIE = "lang"
CSRF_COOKIE = "csrf"
CSRF_TTL = timedelta(hours=12)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' https: data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, kw_only=True)
class WebContext:
    """What the page handlers need; stored on the app under ``CONTEXT``."""

    settings: Settings
    engine: AsyncEngine
    renderer: Renderer
    signer: TokenSigner
    extras: dict[str, Any]  # services added by other parts (the subscriber service, the bot)


CONTEXT = web.AppKey("context", WebContext)
LANGUAGE = web.RequestKey("language", str)  # the language this request is answered in
STATIC_DIR = Path(__file__).parent / "static"  # vendored scripts; no CDN


def create_app(context: WebContext, *setups: Callable[[web.Application], None]) -> web.Application:
    app = web.Application(
        middlewares=[_forwarded, _language, _errors, _security_headers, malformed_forms],
        client_max_size=256 * 1024,
    )
    app[CONTEXT] = context
    app.router.add_get("/healthz", _healthz)
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    for setup in setups:
        setup(app)
    return app


def context_of(request: web.Request) -> WebContext:
    return request.app[CONTEXT]


def language_of(request: web.Request) -> str:
    return str(request.get(LANGUAGE, DEFAULT_LOCALE))


def client_ip(request: web.Request) -> str | None:
    """The client's address; behind trusted proxies already taken from X-Forwarded-For."""
    return request.remote


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(peer: str, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """The rightmost hop of ``X-Forwarded-For`` + ``peer`` that is no trusted proxy.

    Each proxy appends the address it was talked to from, so everything left of the last
    untrusted hop is what somebody claimed; it is never read. When every hop is a proxy, the
    farthest one is the client; an unreadable hop ends the walk at the proxy that passed it on.
    """
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    client = peer
    for hop in [peer, *reversed(hops)]:
        address = _address(hop)
        if address is None:
            return client
        client = str(address)
        if not any(address in network for network in proxies):
            return client
    return client


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:a.b.c.d from a dual-stack socket
    return mapped or address


@web.middleware
async def _forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Behind a trusted proxy: the client's address and the scheme it used (for ``Secure``
    cookies and links) from the proxy's headers; from anyone else they are ignored."""
    proxies = context_of(request).settings.web.trusted_proxies
    peer = request.remote
    if not proxies or peer is None or not _trusted(peer, proxies):
        return await handler(request)
    remote = client_address(peer, request.headers.get("X-Forwarded-For"), proxies)
    # the proxy nearest to us set or appended the last value
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
    scheme = proto if proto in ("http", "https") else request.scheme
    return await handler(request.clone(remote=remote, scheme=scheme))


def _trusted(peer: str, proxies: Sequence[Network]) -> bool:
    address = _address(peer)
    return address is not None and any(address in network for network in proxies)


def page(request: web.Request, template: str, *, status: int = 200, **values: Any) -> web.Response:
    """Render ``templates/pages/<template>`` in the visitor's language."""
    context = context_of(request)
    language = language_of(request)
    environment: jinja2.Environment = context.renderer.environment
    with use_locale(language):
        html = environment.get_template(f"pages/{template}").render(
            organisation=context.settings.organisation,
            language=language,
            other_language="en" if language == "de" else "de",
            path=request.path,
            **values,
        )
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


def csrf_token(request: web.Request, response: web.StreamResponse) -> str:
    """A form token bound to a random value in a cookie (double submit, signed, expiring)."""
    nonce = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(16)
    response.set_cookie(
        CSRF_COOKIE,
        nonce,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=int(CSRF_TTL.total_seconds()),
    )
    return context_of(request).signer.sign(purpose="csrf", subject=nonce, ttl=CSRF_TTL)


def check_csrf(request: web.Request, form: Any) -> None:
    nonce = request.cookies.get(CSRF_COOKIE)
    token = str(form.get("csrf", ""))
    try:
        payload = context_of(request).signer.verify(token, purpose="csrf")
    except TokenError:
        raise _forbidden(request) from None
    if not nonce or not secrets.compare_digest(payload.subject, nonce):
        raise _forbidden(request)


def _forbidden(request: web.Request) -> web.HTTPForbidden:
    with use_locale(language_of(request)):
        text = _("Das Formular ist abgelaufen. Bitte laden Sie die Seite neu.")
    return web.HTTPForbidden(text=text)


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def _language(request: web.Request, handler: Handler) -> web.StreamResponse:
    chosen = request.query.get("lang")
    language = (
        normalize_locale(chosen)
        if chosen in LOCALES
        else normalize_locale(request.cookies.get(LANGUAGE_COOKIE) or _preferred(request))
    )
    request[LANGUAGE] = language
    with use_locale(language):
        response = await handler(request)
    if chosen in LOCALES:
        response.set_cookie(
            LANGUAGE_COOKIE,
            language,
            max_age=365 * 86400,
            samesite="Lax",
            httponly=True,
            secure=request.secure,
        )
    return response


def _preferred(request: web.Request) -> str:
    """The first supported language of ``Accept-Language`` (German when none is)."""
    for part in request.headers.get("Accept-Language", "").split(","):
        tag = part.split(";")[0].strip()
        if normalize_locale(tag) == tag.split("-")[0].lower() and tag:
            return tag
    return DEFAULT_LOCALE


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request failed method=%s path=%s", request.method, request.path)
        with use_locale(language_of(request)):
            text = _("Ein interner Fehler ist aufgetreten. Bitte versuchen Sie es später erneut.")
        return web.Response(text=text, status=500, headers=SECURITY_HEADERS)


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
