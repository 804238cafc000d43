"""Remote images (issue 13, item 3): an https image is fetched once, when the announcement is
saved, into the media store; never at send time, never from a non-public address.

A real https server runs here on 127.0.0.1 with a certificate made for the test (``openssl``).
Names resolve through the policy's injected resolver, and only these tests allow 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.service import Service
from bzi_broadcast.staff import media
from bzi_broadcast.staff.remote_images import (
    Address,
    FetchPolicy,
    RemoteImageRefused,
    fetch_image,
    is_public,
)
from bzi_broadcast.store.schema import media as media_table
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.web.media_pages import REMOTE_IMAGES

from .conftest import EXAMPLE, require_or_skip
from .pictures import png
from .test_delivery import serving, settings_for

PUBLIC_URL = "http://127.0.0.1:8080"
LOCAL = IPv4Address("127.0.0.1")


IMAGE = png(5, 4)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_or_skip(shutil.which("openssl") is not None, "the openssl command")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=bilder.example",
            "-addext", "subjectAltName=DNS:bilder.example,DNS:umweg.example,DNS:intern.example",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass
class ImageHost:
    """An https server with images, redirects, text, oversized and stalling answers."""

    port: int
    requests: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "bilder.example") -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture
async def image_host(certificate: tuple[Path, Path]) -> AsyncIterator[ImageHost]:
    host = ImageHost(port=0)
    never = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        host.requests.append(request.path_qs)
        name = request.match_info["name"]
        if name == "img.png":
            return web.Response(body=IMAGE, content_type="image/png")
        if name == "redir":
            raise web.HTTPFound(request.query["to"])
        if name == "text":
            return web.Response(text="Das ist kein Bild.\n" * 20, content_type="image/png")
        if name == "big":
            return web.Response(body=IMAGE + b"\x00" * media.MAX_BYTES, content_type="image/png")
        if name == "big-chunked":
            return await _chunked(request)
        if name == "stall":
            await never.wait()
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/{name}", answer)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(*certificate)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    host.port = runner.addresses[0][1]
    yield host
    never.set()
    await runner.cleanup()


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(IMAGE)
    for _chunk in range(media.MAX_BYTES // 65536 + 1):
        await response.write(b"\x00" * 65536)
    await response.write_eof()
    return response


NAMES: dict[str, list[str]] = {
    "bilder.example": ["127.0.0.1"],  # the test's image host: allowed below
    "umweg.example": ["127.0.0.1"],
    "loopback.example": ["127.0.0.2"],  # loopback too, but only 127.0.0.1 is allowed
    "privat.example": ["10.0.0.1"],
    "ipv6.example": ["::1"],
    "metadaten.example": ["169.254.169.254"],
    "gemischt.example": ["93.184.215.14", "10.0.0.1"],  # one bad address is enough
    "mapped.example": ["::ffff:127.0.0.1"],
    "geteilt.example": ["100.64.0.1"],
    "intern.example": ["10.1.2.3"],
}


def policy_for(certificate: tuple[Path, Path], **changes: Any) -> FetchPolicy:
    """127.0.0.1 allowed only for the names of the test's image host."""

    async def resolve(host: str, _port: int) -> list[Address]:
        if host not in NAMES:
            raise OSError("unknown")
        return [ip_address(a) for a in NAMES[host]]

    def allowed(address: IPv4Address | IPv6Address) -> bool:
        return is_public(address) or address == LOCAL

    tls = ssl.create_default_context(cafile=str(certificate[0]))
    return FetchPolicy(**{"allowed": allowed, "resolve": resolve, "ssl_context": tls, **changes})


# --- the address policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
        "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1",
        "64:ff9b::a00:1", "fec0::1",
    ],
)  # fmt: skip
def test_addresses_outside_the_public_internet_are_not_public(address: str) -> None:
    assert not is_public(ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2a00:1450:4001:82b::200e"])
def test_public_addresses_are_public(address: str) -> None:
    assert is_public(ip_address(address))


# --- the fetcher ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "loopback.example", "privat.example", "ipv6.example", "metadaten.example",
        "gemischt.example", "mapped.example", "geteilt.example",
    ],
)  # fmt: skip
async def test_a_name_resolving_to_a_non_public_address_is_refused_before_connecting(
    image_host: ImageHost, certificate: tuple[Path, Path], name: str
) -> None:
    with pytest.raises(RemoteImageRefused, match="liegt nicht im öffentlichen Internet"):
        await fetch_image(image_host.url("/img.png", name), policy_for(certificate))
    assert image_host.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:{port}/img.png",
        "https://[::1]:{port}/img.png",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
async def test_an_address_literal_is_checked_like_a_name(image_host: ImageHost, url: str) -> None:
    with pytest.raises(RemoteImageRefused, match="nicht im öffentlichen Internet"):
        await fetch_image(url.format(port=image_host.port), FetchPolicy())
    assert image_host.requests == []


async def test_http_and_credentials_are_refused(image_host: ImageHost) -> None:
    with pytest.raises(RemoteImageRefused, match="nur https"):
        await fetch_image(f"http://127.0.0.1:{image_host.port}/img.png", FetchPolicy())
    with pytest.raises(RemoteImageRefused, match="Benutzernamen"):
        await fetch_image("https://ich:geheim@bilder.example/img.png", FetchPolicy())
    assert image_host.requests == []


async def test_an_allowed_host_gives_the_image(
    image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    assert await fetch_image(image_host.url("/img.png"), policy_for(certificate)) == IMAGE


async def test_the_name_is_resolved_once_and_the_connection_pinned_to_it(
    image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    """DNS rebinding: a second answer (here 10.0.0.1) is never asked for, never used."""
    answers = [[LOCAL], [IPv4Address("10.0.0.1")]]

    async def rebinding(_host: str, _port: int) -> list[Address]:
        return list(answers.pop(0))

    policy = policy_for(certificate, resolve=rebinding)
    assert await fetch_image(image_host.url("/img.png"), policy) == IMAGE
    assert len(answers) == 1


async def test_a_redirect_to_a_private_or_plain_http_address_is_refused(
    image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    policy = policy_for(certificate)
    inside = image_host.url("/img.png", "intern.example")
    for target, why in [
        (inside, "liegt nicht im öffentlichen Internet"),
        ("https://169.254.169.254/latest/meta-data/", "liegt nicht im öffentlichen Internet"),
        (f"http://127.0.0.1:{image_host.port}/img.png", "nur https"),
    ]:
        url = image_host.url("/redir?to=" + quote(target, safe=""))
        with pytest.raises(RemoteImageRefused, match=why):
            await fetch_image(url, policy)
    assert all(path.startswith("/redir") for path in image_host.requests)
    followed = image_host.url("/redir?to=" + image_host.url("/img.png", "umweg.example"))
    assert await fetch_image(followed, policy) == IMAGE


async def test_at_most_three_redirects_are_followed(
    image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    target = image_host.url("/img.png")
    for _hop in range(4):
        target = image_host.url("/redir?to=" + quote(target, safe=""))
    with pytest.raises(RemoteImageRefused, match="mehr als 3 Weiterleitungen"):
        await fetch_image(target, policy_for(certificate))
    assert len(image_host.requests) == 4


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
async def test_more_than_8_mb_is_refused(
    image_host: ImageHost, certificate: tuple[Path, Path], path: str
) -> None:
    with pytest.raises(RemoteImageRefused, match="größer als 8 MB"):
        await fetch_image(image_host.url(path), policy_for(certificate))


async def test_a_server_that_does_not_answer_in_time_is_refused(
    image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    policy = policy_for(certificate, timeout=0.5)
    with pytest.raises(RemoteImageRefused, match=r"keine Antwort innerhalb von 0\.5 Sekunden"):
        await asyncio.wait_for(fetch_image(image_host.url("/stall"), policy), 5)


async def test_an_unknown_host_and_an_error_status_are_refused(
    image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    with pytest.raises(RemoteImageRefused, match="gibt es nicht"):
        await fetch_image("https://unbekannt.example/img.png", policy_for(certificate))
    with pytest.raises(RemoteImageRefused, match="antwortete mit 404"):
        await fetch_image(image_host.url("/fehlt"), policy_for(certificate))


async def test_a_certificate_the_client_does_not_trust_is_refused(
    image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    policy = policy_for(certificate, ssl_context=ssl.create_default_context())
    with pytest.raises(RemoteImageRefused, match="nicht abrufbar"):
        await fetch_image(image_host.url("/img.png"), policy)


# --- adoption into the media store ----------------------------------------------------------------


def with_image(src: str, **image: Any) -> Announcement:
    data = json.loads(load_announcement(EXAMPLE).model_dump_json())
    data["image"] = {"src": src, "alt": "Podium", **image}
    return Announcement.model_validate(data)


async def test_an_https_image_is_stored_and_named_by_our_own_address(
    engine: AsyncEngine, image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    adopted = await media.adopt_image(
        engine,
        with_image(image_host.url("/img.png")),
        public_url=PUBLIC_URL,
        policy=policy_for(certificate),
    )
    assert adopted.image is not None
    token = media.token_of(PUBLIC_URL, adopted.image.src)
    assert token is not None, adopted.image.src
    assert (adopted.image.width, adopted.image.height) == (5, 4)
    stored = await media.fetch(engine, token)
    assert stored is not None
    assert stored.data == IMAGE
    again = await media.adopt_image(
        engine, adopted, public_url=PUBLIC_URL, policy=policy_for(certificate)
    )
    assert again == adopted  # our own address stays, nothing fetched again
    assert image_host.requests == ["/img.png"]


async def test_what_is_not_an_image_is_refused_and_not_stored(
    engine: AsyncEngine, image_host: ImageHost, certificate: tuple[Path, Path]
) -> None:
    with pytest.raises(media.ImageRefused, match="kein Bild im Format PNG, JPEG, GIF oder WebP"):
        await media.adopt_image(
            engine,
            with_image(image_host.url("/text")),
            public_url=PUBLIC_URL,
            policy=policy_for(certificate),
        )
    with pytest.raises(media.ImageRefused, match="Dieses Bild gibt es nicht"):
        await media.adopt_image(
            engine,
            with_image(f"{PUBLIC_URL}/medien/{'A' * 22}"),
            public_url=PUBLIC_URL,
            policy=policy_for(certificate),
        )
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(media_table))).scalar() == 0


# --- the door: the API -------------------------------------------------------------------------


@dataclass(frozen=True)
class Door:
    url: str
    token: str


@pytest.fixture
async def api_door(
    database_url: str, engine: AsyncEngine, certificate: tuple[Path, Path]
) -> AsyncIterator[Door]:
    from bzi_broadcast.staff.accounts import Role, add_user, create_api_token, user_by_email

    await add_user(engine, email="e@bzi.example.org", name="E", role=Role.EDITOR, password="x" * 16)
    user = await user_by_email(engine, "e@bzi.example.org")
    assert user is not None
    token = await create_api_token(engine, user, "test")
    async with SmtpCapture() as smtp:
        service = Service(settings_for(database_url, smtp.port))
        service.web[REMOTE_IMAGES] = policy_for(certificate)
        async with serving(service) as url:
            yield Door(url, token)


async def post_announcement(door: Door, src: str) -> tuple[int, Any]:
    body = json.loads(with_image(src).model_dump_json())
    async with (
        aiohttp.ClientSession(door.url) as http,
        http.post(
            "/api/v1/announcements",
            json=body,
            headers={"Authorization": f"Bearer {door.token}"},
        ) as answer,
    ):
        return answer.status, await answer.json(content_type=None)


@pytest.fixture
async def plain_http_host() -> AsyncIterator[tuple[str, list[str]]]:
    """What the review used: http on 127.0.0.1, redirecting to an image."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path.startswith("/redir/"):
            raise web.HTTPFound("/img.png")
        return web.Response(body=IMAGE, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", seen
    await server.close()


async def test_the_api_refuses_an_internal_image_address_without_fetching_it(
    api_door: Door, plain_http_host: tuple[str, list[str]], image_host: ImageHost
) -> None:
    base, seen = plain_http_host
    for src in (
        f"{base}/redir/img.png",
        f"https://127.0.0.1:{image_host.port}/img.png",  # allowed in policy_for only by name
        image_host.url("/img.png", "privat.example"),
    ):
        status, body = await post_announcement(api_door, src)
        assert status == 422, body
        assert [e["field"] for e in body["errors"]] == ["image.src"]
        assert body["errors"][0]["detail"].startswith("Bild ")
    assert seen == []
    assert image_host.requests == []


async def test_the_api_stores_an_https_image_and_names_it_by_our_address(
    api_door: Door, image_host: ImageHost, engine: AsyncEngine
) -> None:
    status, body = await post_announcement(api_door, image_host.url("/img.png"))
    assert status == 201, body
    src = body["content"]["image"]["src"]
    token = media.token_of(PUBLIC_URL, src)
    assert token is not None, src
    stored = await media.fetch(engine, token)
    assert stored is not None
    assert stored.data == IMAGE
    assert image_host.requests == ["/img.png"]
