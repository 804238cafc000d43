"""A local Mastodon API server (aiohttp) that behaves like a real instance where we depend on it.

Follows docs.joinmastodon.org:
- methods/instance: ``GET /api/v1/instance`` and ``GET /api/v2/instance`` with
  ``configuration.statuses.max_characters``, ``characters_reserved_per_url`` and
  ``configuration.media_attachments`` (``description_limit``).
- methods/statuses "Post a new status": ``POST /api/v1/statuses``; the ``Idempotency-Key`` header
  makes a repeat within one hour return the original status; the length is counted as
  Mastodon's StatusLengthValidator does (422 "Validation failed: Text character limit of N
  exceeded"); ``in_reply_to_id`` must exist (404); media must have finished processing (422).
- methods/media "Upload media as an attachment (async)": ``POST /api/v2/media`` answers 202 with
  ``url: null`` while processing; ``GET /api/v1/media/:id`` answers 206 until processed, then 200;
  the deprecated ``POST /api/v1/media`` answers 200 with the processed attachment.
- methods/accounts "Verify account credentials"; api/oauth-tokens: 401 "The access token is
  invalid" for a wrong token.
- api/rate-limits: ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (ISO 8601) on every
  response; 429 "Too many requests" when the budget is spent.
Everything received is recorded; faults can be injected per route.

    python -m bzi_broadcast.testing.mastodon --port 8081 --token secret
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from bzi_broadcast.render.counting import mastodon_length

IDEMPOTENCY_TTL = 3600.0


@dataclass(frozen=True, kw_only=True)
class Fault:
    status: int = 500
    error: str = "Internal Server Error"
    delay: float = 0.0
    drop: bool = False  # close the connection without an answer (the request may have worked)
    after: bool = False  # do the work first, then fail or drop (a lost response)
    on_call: int | None = None  # fire on this call of the route (1-based); None: the next call
    headers: tuple[tuple[str, str], ...] = ()  # e.g. (("X-RateLimit-Reset", "…"),) on a 429


@dataclass
class Media:
    id: str
    description: str
    ready_at: float
    content: bytes = b""


@dataclass
class MastodonServer:
    token: str = "local-token"  # noqa: S105 - the local server's own test token
    max_characters: int = 500
    url_length: int = 23
    description_limit: int = 1500
    version: str = "4.3.0"
    # An instance document to serve instead of our own (another family or version, see
    # tests/fixtures/mastodon_instances); without v2, /api/v2/instance answers 404 as before 4.0.
    instance_document: dict[str, Any] | None = None
    has_instance_v2: bool = True
    requests_per_window: int = 300
    window_seconds: float = 300.0
    processing_seconds: float = 0.2
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[str, Media] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))

    def __post_init__(self) -> None:
        self._keys: dict[str, tuple[float, str]] = {}
        self._requests: deque[float] = deque()
        self._next_id = 100000
        self._route_calls: dict[str, int] = defaultdict(int)

    def inject(self, route: str, fault: Fault, times: int = 1) -> None:
        """``route`` like "POST /api/v1/statuses"."""
        self.faults[route].extend([fault] * times)

    def thread(self) -> list[dict[str, Any]]:
        """Posted statuses in order of creation."""
        return sorted(self.statuses.values(), key=lambda s: int(s["id"]))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for slash in ("", "/"):  # Mastodon.py asks for "/api/v2/instance/"
            app.router.add_get(f"/api/v1/instance{slash}", self._instance_v1)
            app.router.add_get(f"/api/v2/instance{slash}", self._instance_v2)
        app.router.add_get("/api/v1/accounts/verify_credentials", self._verify)
        app.router.add_post("/api/v1/statuses", self._post_status)
        app.router.add_get("/api/v1/statuses/{id}", self._get_status)
        app.router.add_delete("/api/v1/statuses/{id}", self._delete_status)
        app.router.add_get("/api/v1/accounts/{id}/statuses", self._account_statuses)
        app.router.add_post("/api/v2/media", self._post_media)
        app.router.add_post("/api/v1/media", self._post_media_v1)
        app.router.add_get("/api/v1/media/{id}", self._get_media)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = f"{request.method} {request.path}"
        template = (
            request.match_info.route.resource.canonical
            if request.match_info.route.resource
            else route
        )
        self.calls.append((request.method, request.path, dict(request.headers)))
        fault = self._fault_for(f"{request.method} {template}")
        if fault and not fault.after:
            return await self._apply(request, fault)
        if "/instance" not in request.path and not self._authorized(request):
            return self._json({"error": "The access token is invalid"}, 401)
        if not self._admit():
            return self._json({"error": "Too many requests"}, 429)
        response: web.StreamResponse = await handler(request)
        if fault:
            return await self._apply(request, fault)
        self._headers(response)
        return response

    def _fault_for(self, route: str) -> Fault | None:
        self._route_calls[route] += 1
        queue = self.faults.get(route)
        if queue and queue[0].on_call in (None, self._route_calls[route]):
            return queue.popleft()
        return None

    async def _apply(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop and request.transport is not None:
            request.transport.close()
        response = self._json({"error": fault.error}, fault.status)
        response.headers.update(dict(fault.headers))
        return response

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    def _admit(self) -> bool:
        now = time.monotonic()
        while self._requests and self._requests[0] <= now - self.window_seconds:
            self._requests.popleft()
        if len(self._requests) >= self.requests_per_window:
            return False
        self._requests.append(now)
        return True

    def _headers(self, response: web.StreamResponse) -> None:
        now = time.monotonic()
        reset_in = (self._requests[0] + self.window_seconds - now) if self._requests else 0.0
        reset = datetime.now(UTC) + timedelta(seconds=max(0.0, reset_in))
        response.headers["X-RateLimit-Limit"] = str(self.requests_per_window)
        response.headers["X-RateLimit-Remaining"] = str(
            max(0, self.requests_per_window - len(self._requests))
        )
        response.headers["X-RateLimit-Reset"] = reset.isoformat(timespec="milliseconds")

    def _json(self, body: Any, status: int = 200) -> web.Response:
        response = web.json_response(body, status=status)
        self._headers(response)
        return response

    # --- routes ---------------------------------------------------------------------------------

    async def _instance_v1(self, request: web.Request) -> web.Response:
        if self.instance_document is not None:
            return web.json_response(self.instance_document)
        return web.json_response(
            {
                "uri": request.host,
                "title": "BZI lokal",
                "version": self.version,
                "configuration": self._configuration(),
                "urls": {},
                "stats": {},
                "languages": ["de", "en"],
                "registrations": False,
            }
        )

    async def _instance_v2(self, request: web.Request) -> web.Response:
        if not self.has_instance_v2:
            return web.json_response({"error": "Record not found"}, status=404)
        if self.instance_document is not None:
            return web.json_response(self.instance_document)
        return web.json_response(
            {
                "domain": request.host,
                "title": "BZI lokal",
                "version": self.version,
                "source_url": "https://github.com/mastodon/mastodon",
                "description": "",
                "usage": {"users": {"active_month": 1}},
                "languages": ["de", "en"],
                "configuration": self._configuration(),
                "registrations": {"enabled": False, "approval_required": True, "message": None},
                "contact": {"email": "admin@bzi.example.org", "account": None},
                "rules": [],
                "api_versions": {"mastodon": 2},  # since 4.3.0
            }
        )

    def _configuration(self) -> dict[str, Any]:
        return {
            "urls": {"streaming": ""},
            "accounts": {"max_featured_tags": 10},
            "statuses": {
                "max_characters": self.max_characters,
                "max_media_attachments": 4,
                "characters_reserved_per_url": self.url_length,
            },
            "media_attachments": {
                "supported_mime_types": ["image/jpeg", "image/png", "image/gif", "image/webp"],
                "image_size_limit": 16777216,
                "image_matrix_limit": 33177600,
                "video_size_limit": 103809024,
                "video_frame_rate_limit": 120,
                "video_matrix_limit": 8294400,
                "description_limit": self.description_limit,
            },
            "polls": {
                "max_options": 4,
                "max_characters_per_option": 50,
                "min_expiration": 300,
                "max_expiration": 2629746,
            },
        }

    async def _verify(self, request: web.Request) -> web.Response:
        return self._json(_account())

    async def _post_status(self, request: web.Request) -> web.Response:
        form = await _form(request)
        key = request.headers.get("Idempotency-Key")
        now = time.monotonic()
        if key and key in self._keys and now - self._keys[key][0] < IDEMPOTENCY_TTL:
            return self._json(self.statuses[self._keys[key][1]])
        problem = self._invalid(form)
        if problem:
            status, error = problem
            return self._json({"error": error}, status)
        status_id = self._new_id()
        self.statuses[status_id] = _status(
            status_id, form, [self._media_json(m) for m in _list(form, "media_ids")]
        )
        if key:
            self._keys[key] = (now, status_id)
        return self._json(self.statuses[status_id])

    def _invalid(self, form: dict[str, Any]) -> tuple[int, str] | None:
        text, spoiler = str(form.get("status", "")), str(form.get("spoiler_text", ""))
        media_ids = _list(form, "media_ids")
        if not text.strip() and not media_ids:
            return 422, "Validation failed: Text can't be blank"
        length = mastodon_length(text, url_length=self.url_length, spoiler_text=spoiler)
        if length > self.max_characters:
            return 422, f"Validation failed: Text character limit of {self.max_characters} exceeded"
        reply_to = form.get("in_reply_to_id")
        if reply_to and reply_to not in self.statuses:
            return 404, "Record not found"
        for media_id in media_ids:
            item = self.media.get(media_id)
            if item is None:
                return 422, "Validation failed: Media IDs are invalid"
            if time.monotonic() < item.ready_at:
                return 422, (
                    "Cannot attach files that have not finished processing. Try again in a moment!"
                )
        if form.get("visibility", "public") not in ("public", "unlisted", "private", "direct"):
            return 422, "Validation failed: Visibility is not included in the list"
        return None

    async def _get_status(self, request: web.Request) -> web.Response:
        found = self.statuses.get(request.match_info["id"])
        return self._json(found) if found else self._json({"error": "Record not found"}, 404)

    async def _delete_status(self, request: web.Request) -> web.Response:
        """methods/statuses "Delete a status": the status as it was, with its source text."""
        found = self.statuses.pop(request.match_info["id"], None)
        return self._json(found) if found else self._json({"error": "Record not found"}, 404)

    async def _account_statuses(self, request: web.Request) -> web.Response:
        """methods/accounts "Get account's statuses": newest first, ``limit`` (default 20, at
        most 40), older than ``max_id``; replies included unless ``exclude_replies``."""
        if request.match_info["id"] != _account()["id"]:
            return self._json({"error": "Record not found"}, 404)
        limit = min(int(request.query.get("limit") or 20), 40)
        max_id = int(request.query.get("max_id") or 0)
        no_replies = request.query.get("exclude_replies") in ("true", "1")
        found = [
            s
            for s in reversed(self.thread())
            if (not max_id or int(s["id"]) < max_id) and not (no_replies and s["in_reply_to_id"])
        ]
        return self._json(found[:limit])

    async def _post_media_v1(self, request: web.Request) -> web.Response:
        """The synchronous upload (deprecated since 3.1.3, still served; Mastodon.py uses it for
        servers that report an older version, such as GoToSocial and Pleroma): 200, processed."""
        return await self._post_media(request, processing=0.0)

    async def _post_media(
        self, request: web.Request, processing: float | None = None
    ) -> web.Response:
        form = await _form(request)
        if not isinstance(form.get("file"), bytes):
            return self._json({"error": "Validation failed: File can't be blank"}, 422)
        description = str(form.get("description") or "")
        if len(description) > self.description_limit:
            return self._json(
                {
                    "error": "Validation failed: Description is too long (maximum is "
                    f"{self.description_limit} characters)"
                },
                422,
            )
        media_id = self._new_id()
        self.media[media_id] = Media(
            id=media_id,
            description=description,
            ready_at=time.monotonic()
            + (self.processing_seconds if processing is None else processing),
            content=form["file"],
        )
        return self._json(self._media_json(media_id), 200 if processing == 0.0 else 202)

    async def _get_media(self, request: web.Request) -> web.Response:
        media_id = request.match_info["id"]
        if media_id not in self.media:
            return self._json({"error": "Record not found"}, 404)
        body = self._media_json(media_id)
        return self._json(body, 200 if body["url"] else 206)

    def _media_json(self, media_id: str) -> dict[str, Any]:
        item = self.media[media_id]
        ready = time.monotonic() >= item.ready_at
        url = f"https://files.local/media/{media_id}.jpg" if ready else None
        return {
            "id": media_id,
            "type": "image",
            "url": url,
            "preview_url": url,
            "remote_url": None,
            "description": item.description,
            "blurhash": None,
            "meta": {},
        }

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)


def _account() -> dict[str, Any]:
    return {
        "id": "1",
        "username": "bzi",
        "acct": "bzi",
        "display_name": "BZI",
        "locked": False,
        "bot": False,
        "created_at": "2025-01-01T00:00:00.000Z",
        "note": "",
        "url": "https://mastodon.local/@bzi",
        "avatar": "",
        "header": "",
        "followers_count": 0,
        "following_count": 0,
        "statuses_count": 0,
        "emojis": [],
        "fields": [],
    }


def _status(status_id: str, form: dict[str, Any], media: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": status_id,
        "uri": f"https://mastodon.local/users/bzi/statuses/{status_id}",
        "url": f"https://mastodon.local/@bzi/{status_id}",
        "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "content": f"<p>{form.get('status', '')}</p>",
        "text": form.get("status", ""),
        "spoiler_text": form.get("spoiler_text", ""),
        "sensitive": bool(form.get("spoiler_text")),
        "visibility": form.get("visibility", "public"),
        "language": form.get("language"),
        "in_reply_to_id": form.get("in_reply_to_id"),
        "in_reply_to_account_id": None,
        "media_attachments": media,
        "account": _account(),
        "mentions": [],
        "tags": [],
        "emojis": [],
        "reblogs_count": 0,
        "favourites_count": 0,
        "replies_count": 0,
        "reblog": None,
        "poll": None,
        "card": None,
        "application": None,
    }


async def _form(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        data: dict[str, Any] = await request.json()
        return data
    form: dict[str, Any] = {}
    for key, value in (await request.post()).items():
        if isinstance(value, web.FileField):  # an uploaded file
            value = value.file.read()
        if key.endswith("[]"):
            form.setdefault(key[:-2], []).append(value)
        else:
            form[key] = value
    return form


def _list(form: dict[str, Any], key: str) -> list[str]:
    value = form.get(key) or []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def main() -> None:
    parser = argparse.ArgumentParser(description="Local Mastodon API server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", default="local-token")
    parser.add_argument("--max-characters", type=int, default=500)
    args = parser.parse_args()
    server = MastodonServer(token=args.token, max_characters=args.max_characters)
    web.run_app(server.app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
