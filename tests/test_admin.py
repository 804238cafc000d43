"""Staff login: argon2id, lockout with backoff, a new session id at every login, CSRF on every
state-changing request, roles, logout, the audit log; `users add` from the CLI."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.schema import audit_log, users
from bzi_broadcast.testing.smtp import SmtpCapture

from .test_delivery import serving, settings_for
from .test_operations import cli

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
PASSWORD = "korrekt-pferd-batterie"


@pytest.fixture
async def base(database_url: str, engine: AsyncEngine) -> AsyncIterator[str]:
    await add_user(
        engine, email="eva@bzi.example.org", name="Eva", role=Role.EDITOR, password=PASSWORD
    )
    await add_user(
        engine, email="ada@bzi.example.org", name="Ada", role=Role.ADMIN, password=PASSWORD
    )
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
    ):
        yield url


def client(base: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, email: str, password: str) -> tuple[int, str]:
    async with http.get("/admin/anmelden") as answer:
        token = CSRF.search(await answer.text())
    assert token
    form = {"csrf": token.group(1), "email": email, "password": password}
    async with http.post("/admin/anmelden", data=form, allow_redirects=False) as answer:
        return answer.status, await answer.text()


def session_of(http: aiohttp.ClientSession) -> str | None:
    for cookie in http.cookie_jar:
        if cookie.key == "bzi_session":
            return cookie.value
    return None


async def test_login_changes_the_session_and_roles_are_enforced(base: str) -> None:
    async with client(base) as http:
        async with http.get("/admin", allow_redirects=False) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == "/admin/anmelden"
        status, _page = await login(http, "eva@bzi.example.org", PASSWORD)
        assert status == 303
        first = session_of(http)
        async with http.get("/admin") as answer:
            assert "Angemeldet als Eva (editor)" in await answer.text()
        async with http.get("/admin/benutzer") as answer:
            assert answer.status == 403  # editors do not manage users
        await login(http, "eva@bzi.example.org", PASSWORD)
        assert session_of(http) not in (None, first)  # a new id at every login
    async with client(base) as http:
        await login(http, "ada@bzi.example.org", PASSWORD)
        async with http.get("/admin/benutzer") as answer:
            assert answer.status == 200
            assert "eva@bzi.example.org" in await answer.text()


async def test_wrong_passwords_lock_the_account_and_unknown_addresses_say_the_same(
    base: str, engine: AsyncEngine
) -> None:
    async with client(base) as http:
        unknown = await login(http, "niemand@bzi.example.org", "falsch-falsch-falsch")
        wrong = await login(http, "eva@bzi.example.org", "falsch-falsch-falsch")
        assert unknown[0] == wrong[0] == 401
        assert "E-Mail-Adresse oder Passwort stimmen nicht" in unknown[1]
        assert "E-Mail-Adresse oder Passwort stimmen nicht" in wrong[1]
        for _attempt in range(4):
            await login(http, "eva@bzi.example.org", "falsch-falsch-falsch")
        status, page = await login(http, "eva@bzi.example.org", PASSWORD)
        assert status == 401  # locked: even the right password is refused now
        assert "E-Mail-Adresse oder Passwort stimmen nicht" in page  # the same answer
    async with engine.connect() as conn:
        locked = (
            await conn.execute(select(users.c.locked_until).where(users.c.name == "Eva"))
        ).scalar()
        actions = list((await conn.execute(select(audit_log.c.action))).scalars())
    assert locked is not None
    assert actions.count("login.failed") == 6
    assert "login.locked" in actions


async def test_state_changes_need_the_csrf_token_and_logout_ends_the_session(base: str) -> None:
    async with client(base) as http:
        async with http.post(
            "/admin/anmelden", data={"email": "eva@bzi.example.org", "password": PASSWORD}
        ) as answer:
            assert answer.status == 403
        await login(http, "eva@bzi.example.org", PASSWORD)
        async with http.post("/admin/abmelden", data={}) as answer:
            assert answer.status == 403
        async with http.get("/admin") as answer:
            token = CSRF.search(await answer.text())
        assert token
        old = session_of(http)
        async with http.post("/admin/abmelden", data={"csrf": token.group(1)}) as answer:
            assert answer.url.path == "/admin/anmelden"
    async with client(base) as stolen:  # the old cookie is worthless after logout
        stolen.cookie_jar.update_cookies({"bzi_session": old or ""})
        async with stolen.get("/admin", allow_redirects=False) as answer:
            assert answer.status == 303


async def test_users_add_from_the_cli(database_url: str, engine: AsyncEngine) -> None:
    short = await asyncio.to_thread(
        cli, database_url, "users", "add", "a@bzi.example.org", "--name", "A", stdin="kurz\n"
    )
    assert short.returncode == 1
    assert "mindestens 12 Zeichen" in short.stderr
    made = await asyncio.to_thread(
        cli,
        database_url,
        "users",
        "add",
        "a@bzi.example.org",
        "--name",
        "A",
        "--role",
        "publisher",
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    async with engine.connect() as conn:
        row = (await conn.execute(select(users))).one()
    assert row.role == "publisher"
    assert row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
