"""``bzi-broadcast serve --demo`` as a newcomer runs it: no configuration, no credentials.

The process starts in an empty directory, prints its banner with the logins, and serves. The
printed admin logs in; the "Beispiel jetzt senden" button takes the example through review to a
release; ``/demo`` then shows the emails, the Mastodon thread and the Telegram messages. SIGTERM
ends it with exit 0, and a restart prints the same logins without duplicating anything.
"""

from __future__ import annotations

import asyncio
import html
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bzi_broadcast.web.demo import telegram_markup

from .test_admin import CSRF, client, login
from .test_delivery import wait_until

TITLE = "Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"
ACCOUNT = re.compile(r"^\s+(\S+@\S+)\s+(\S+)\s+\((admin|publisher|editor)\)$", re.MULTILINE)


@dataclass
class Demo:
    process: asyncio.subprocess.Process
    base: str
    banner: str
    stderr: list[bytes]

    def password(self, role: str) -> tuple[str, str]:
        for email, password, found in ACCOUNT.findall(self.banner):
            if found == role:
                return email, password
        raise AssertionError(f"no {role} login in the banner:\n{self.banner}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def demo(workdir: Path) -> AsyncIterator[Demo]:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bzi_broadcast",
        "serve",
        "--demo",
        "--port",
        str(port),
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stderr: list[bytes] = []
    drain = asyncio.create_task(_collect(process.stderr, stderr))
    try:
        banner = await asyncio.wait_for(_banner(process.stdout), timeout=60)
        yield Demo(process=process, base=f"http://127.0.0.1:{port}", banner=banner, stderr=stderr)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
        await drain


async def _collect(stream: asyncio.StreamReader, into: list[bytes]) -> None:
    while line := await stream.readline():
        into.append(line)


async def _banner(stdout: asyncio.StreamReader) -> str:
    lines: list[str] = []
    while "Strg+C" not in "".join(lines):
        line = await stdout.readline()
        assert line, "serve --demo ended before it printed its banner:\n" + "".join(lines)
        lines.append(line.decode())
    return "".join(lines)


async def _page(http: aiohttp.ClientSession, path: str) -> str:
    async with http.get(path) as answer:
        assert answer.status == 200, path
        return await answer.text()


async def _arrived(http: aiohttp.ClientSession) -> str | None:
    """The /demo page once it shows three emails, the whole thread and the Telegram chats."""
    page = await _page(http, "/demo")
    emails = page.count('<details class="mail"')
    toots = len(re.findall(r'<li class="toot', page))
    bubbles = page.count('<li class="bubble"')
    done = "Gesendet" in page and emails >= 3 and toots >= 2 and bubbles >= 3
    return page if done else None


async def test_demo_sends_the_example_to_every_local_server(tmp_path: Path) -> None:
    async with demo(tmp_path) as running:
        assert f"{running.base}/admin/anmelden" in running.banner
        assert f"{running.base}/demo" in running.banner
        assert f"{running.base}/anmelden" in running.banner
        admin, password = running.password("admin")
        async with client(running.base) as http:
            async with http.get("/readyz") as answer:
                assert answer.status == 200
                assert set((await answer.json())["channels"]) == {"email", "mastodon", "telegram"}
            status, _body = await login(http, admin, password)
            assert status == 303
            overview = await _page(http, "/admin")
            assert html.escape(TITLE) in overview or TITLE in overview
            form = await _page(http, "/demo")
            assert "Noch keine E-Mail empfangen." in form
            token = CSRF.search(form)
            assert token
            async with http.post(
                "/demo/senden", data={"csrf": "falsch"}, allow_redirects=False
            ) as answer:
                assert answer.status == 403  # CSRF-protected
            async with http.post(
                "/demo/senden", data={"csrf": token.group(1)}, allow_redirects=False
            ) as answer:
                assert answer.status == 303
                assert answer.headers["Location"].startswith("/demo?gesendet=")
            page = await wait_until(lambda: _arrived(http), timeout=90, interval=0.5)
            assert page is not None
        assert "srcdoc=" in page
        assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page
        assert "amira.haddad@example.org" in page
        assert "BZI-Kanal (Demo)" in page
        assert "Weltoffene Kommunen" in page
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), 60) == 0
    assert b"Traceback" not in b"".join(running.stderr)
    assert (tmp_path / "data" / "demo.sqlite3").exists()

    async with demo(tmp_path) as again:
        assert again.password("admin") == (admin, password)  # the same logins after a restart
        async with client(again.base) as http:
            metrics = await _page(http, "/metrics")
            page = await _page(http, "/demo")
    assert re.findall(r'bzi_announcements\{status="(\w+)"\} (\d+)', metrics) == [("sent", "1")]
    assert "Noch keine E-Mail empfangen." in page  # the local servers start empty again


def test_telegram_messages_are_shown_escaped_with_their_entities() -> None:
    text = "Fett 😀 <b>kein Tag</b> Link"
    entities = [
        {"type": "bold", "offset": 0, "length": 4},
        {
            "type": "text_link",
            "offset": 24,
            "length": 4,
            "url": "https://bzi.example.org/a?b=1&c=2",
        },
        {"type": "text_link", "offset": 0, "length": 4, "url": "javascript:alert(1)"},
    ]
    shown = str(telegram_markup(text, entities))
    assert shown.startswith("<strong>Fett</strong> 😀 &lt;b&gt;kein Tag&lt;/b&gt; ")
    assert shown.endswith(
        '<a href="https://bzi.example.org/a?b=1&amp;c=2" target="_blank" '
        'rel="noopener noreferrer">Link</a>'
    )
    assert "javascript" not in shown


def test_the_demo_page_exists_only_in_demo_mode(tmp_path: Path) -> None:
    from bzi_broadcast.service import Service

    from .test_delivery import settings_for

    service = Service(settings_for(f"sqlite:///{tmp_path / 'db.sqlite3'}", 25))
    paths = {resource.canonical for resource in service.web.router.resources()}
    assert "/metrics" in paths
    assert not {"/demo", "/demo/senden", "/demo/stand"} & paths
