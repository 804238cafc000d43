"""``bzi-broadcast serve`` posts the shipped example to an unmodified ``mastodon-mock``.

As an operator would run it: ``bzi-broadcast queue --now FILE`` and ``bzi-broadcast serve`` as
subprocesses configured only through ``BZI_*`` variables, Mastodon the only channel with anyone
to reach (no subscribers, Telegram off), pointed at mastodon-mock with its seeded token
``mock_token``. The result is read back through mastodon-mock's own Mastodon API.

The shipped example (config/examples/weltoffene-kommunen.yaml) has no image, so the file queued
here is its text unchanged with an ``image:`` entry appended: a PNG beside the file, named by a
relative path, as an editor would add one. ``queue`` stores that image and points the
announcement at ``<email.public_url>/medien/<id>``, served by ``serve`` itself; so
``email.public_url`` is serve's own address, and serve runs from another directory than the file.

Assumptions about mastodon-mock 0.6.1, as about any Mastodon: its instance document advertises
500 characters and 23 per URL (it has no description_limit, like Mastodon before 4.4: the
channel must not need it); ``GET /api/v1/accounts/:id/statuses`` lists the account's statuses
newest first with ``in_reply_to_id`` and each attachment's ``description``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bzi_broadcast.config import Settings
from bzi_broadcast.content import load_announcement
from bzi_broadcast.render import Renderer, ThreadLimits
from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import EXAMPLE, MASTODON_MOCK_TOKEN, TEST_SECRET_KEY
from .pictures import png
from .test_delivery import wait_until

ALT = "Podium der 1. Regionalkonferenz des Themenforums „Integration vor Ort“ in Potsdam"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(database: Path, mastodon: str, web_port: int, smtp_port: int) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BZI_")}
    return {
        **clean,
        "BZI_DATABASE_URL": f"sqlite:///{database}",
        "BZI_SECURITY_SECRET_KEY": TEST_SECRET_KEY,
        "BZI_SMTP_PORT": str(smtp_port),
        "BZI_WEB_PORT": str(web_port),
        "BZI_EMAIL_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "BZI_EMAIL_ALLOW_INSECURE_PUBLIC_URL": "true",  # serve's own address on 127.0.0.1
        "BZI_DELIVERY_POLL_INTERVAL": "0.1",
        "BZI_MASTODON_ENABLED": "true",
        "BZI_MASTODON_BASE_URL": mastodon,
        "BZI_MASTODON_ACCESS_TOKEN": MASTODON_MOCK_TOKEN,
    }


def rendered(announcement_file: Path) -> tuple[object, ...]:
    """The thread as serve renders it (its settings differ from the defaults only in where it
    connects) for mastodon-mock's advertised 500 characters and 23 per URL."""
    announcement = load_announcement(announcement_file)
    return tuple(Renderer(Settings()).mastodon(announcement, ThreadLimits()).posts)


async def mock_statuses(base: str) -> list[dict[str, Any]]:
    """The seeded account's statuses on mastodon-mock, oldest first."""
    headers = {"Authorization": f"Bearer {MASTODON_MOCK_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        me = await (await http.get(f"{base}/api/v1/accounts/verify_credentials")).json()
        url = f"{base}/api/v1/accounts/{me['id']}/statuses?limit=40"
        found: list[dict[str, Any]] = await (await http.get(url)).json()
    return list(reversed(found))


async def test_serve_posts_the_example_to_mastodon_mock_as_one_chain_with_alt_text(
    mastodon_mock: str, tmp_path: Path
) -> None:
    site, elsewhere = tmp_path / "announcements", tmp_path / "service"
    site.mkdir()
    elsewhere.mkdir()
    (site / "podium.png").write_bytes(png(4, 3))
    text = EXAMPLE.read_text("utf-8")
    assert "\nimage:" not in text  # the example itself has none (see the module docstring)
    announcement_file = site / "weltoffene-kommunen.yaml"
    announcement_file.write_text(f'{text}\nimage:\n  src: podium.png\n  alt: "{ALT}"\n', "utf-8")
    smtp = await SmtpCapture().start()  # serve checks its mail server at start; nobody to mail
    try:
        await queue_and_serve(announcement_file, elsewhere, tmp_path, mastodon_mock, smtp.port)
    finally:
        await smtp.stop()
    assert smtp.received == []
    statuses = await mock_statuses(mastodon_mock)
    assert len(statuses) == len(rendered(announcement_file)) > 1
    assert statuses[0]["in_reply_to_id"] is None
    for previous, status in itertools.pairwise(statuses):
        assert status["in_reply_to_id"] == previous["id"]
    assert "Weltoffene Kommunen" in statuses[0]["content"]
    media = statuses[0]["media_attachments"]
    assert [m["description"] for m in media] == [ALT]
    assert all(not s["media_attachments"] for s in statuses[1:])


async def queue_and_serve(
    announcement_file: Path, elsewhere: Path, tmp_path: Path, mastodon_mock: str, smtp_port: int
) -> None:
    """``queue --now`` the file, run ``serve`` until the whole thread is on mastodon-mock (or two
    minutes passed), stop it with SIGTERM; no traceback in its output."""
    env = environment(tmp_path / "db.sqlite3", mastodon_mock, free_port(), smtp_port)
    command = [sys.executable, "-m", "bzi_broadcast"]

    queued = await asyncio.to_thread(
        subprocess.run,
        [*command, "queue", "--now", str(announcement_file)],
        env=env,
        cwd=announcement_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert queued.returncode == 0, queued.stderr

    count = len(rendered(announcement_file))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            [*command, "serve"], env=env, cwd=elsewhere, stdout=log, stderr=log
        )
        try:

            async def posted() -> list[dict[str, Any]] | None:
                assert service.poll() is None, log_path.read_text(errors="replace")
                found = await mock_statuses(mastodon_mock)
                return found if len(found) >= count else None

            await wait_until(posted, timeout=120, interval=0.2)
            service.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(asyncio.to_thread(service.wait), 60) == 0
        finally:
            if service.poll() is None:
                service.kill()
    output = log_path.read_text(errors="replace")
    assert "Traceback" not in output, output
    assert len(await mock_statuses(mastodon_mock)) == count, output  # nothing posted twice
