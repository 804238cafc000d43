"""Admins manage accounts in the workspace (add, role, unlock, remove); everyone changes their
own password, proving the current one, which ends their other sessions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import audit_log, users
from bzi_broadcast.testing.smtp import SmtpCapture

from .test_admin import CSRF, PASSWORD, client, login
from .test_delivery import serving, settings_for

ADMIN, EDITOR = "ada@bzi.example.org", "eva@bzi.example.org"


@pytest.fixture
async def base(database_url: str, engine: AsyncEngine) -> AsyncIterator[str]:
    await add_user(engine, email=ADMIN, name="Ada", role=Role.ADMIN, password=PASSWORD)
    await add_user(engine, email=EDITOR, name="Eva", role=Role.EDITOR, password=PASSWORD)
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
    ):
        yield url


async def form_post(
    http: aiohttp.ClientSession, page: str, target: str, **fields: str
) -> tuple[int, str]:
    async with http.get(page) as answer:
        token = CSRF.search(await answer.text())
    assert token
    async with http.post(target, data={"csrf": token.group(1), **fields}) as answer:
        return answer.status, await answer.text()


async def user_id(engine: AsyncEngine, email: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(users.c.id).where(users.c.email == email))).one()[0])


async def test_an_admin_adds_changes_unlocks_and_removes_accounts(
    base: str, engine: AsyncEngine
) -> None:
    async with client(base) as http:
        await login(http, ADMIN, PASSWORD)
        new = {"name": "Paul <b>", "email": "paul@bzi.example.org", "role": "publisher"}
        status, page = await form_post(
            http, "/admin/benutzer", "/admin/benutzer", **new, language="de", password="kurz"
        )
        assert status == 422 and "mindestens 12 Zeichen" in page
        assert 'value="paul@bzi.example.org"' in page  # what was typed is kept
        status, page = await form_post(
            http, "/admin/benutzer", "/admin/benutzer", **new, language="en", password=PASSWORD
        )
        assert status == 200 and "Konto angelegt." in page
        assert "Paul &lt;b&gt;" in page and "Paul <b>" not in page

        eva = await user_id(engine, EDITOR)
        async with engine.begin() as conn:
            locked = utcnow() + timedelta(hours=1)
            await conn.execute(update(users).where(users.c.id == eva).values(locked_until=locked))
        target = f"/admin/benutzer/{eva}"
        await form_post(http, "/admin/benutzer", target, action="role", role="publisher")
        await form_post(http, "/admin/benutzer", target, action="unlock")
        async with engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.id == eva))).one()
        assert (row.role, row.locked_until) == ("publisher", None)

        me = f"/admin/benutzer/{await user_id(engine, ADMIN)}"
        status, page = await form_post(http, "/admin/benutzer", me, action="role", role="editor")
        assert status == 409 and "eigene Rolle" in page
        status, page = await form_post(http, "/admin/benutzer", me, action="remove")
        assert status == 409
        await form_post(http, "/admin/benutzer", target, action="remove")
    async with engine.connect() as conn:
        left = set((await conn.execute(select(users.c.email))).scalars())
        actions = list((await conn.execute(select(audit_log.c.action))).scalars())
    assert left == {ADMIN, "paul@bzi.example.org"}
    assert {"user.added", "user.changed", "user.removed"} <= set(actions)


async def test_editors_cannot_manage_accounts_and_every_post_needs_csrf(
    base: str, engine: AsyncEngine
) -> None:
    admin_id = await user_id(engine, ADMIN)
    async with client(base) as http:
        await login(http, EDITOR, PASSWORD)
        status, _page = await form_post(
            http, "/admin/konto", f"/admin/benutzer/{admin_id}", action="remove"
        )
        assert status == 403
    async with client(base) as http:
        await login(http, ADMIN, PASSWORD)
        async with http.post(f"/admin/benutzer/{admin_id}", data={"action": "remove"}) as answer:
            assert answer.status == 403
    async with engine.connect() as conn:
        assert (await conn.execute(select(users.c.id).where(users.c.id == admin_id))).one()


async def test_changing_the_password_needs_the_current_one_and_ends_other_sessions(
    base: str,
) -> None:
    new_password = "ein-ganz-neues-passwort"
    async with client(base) as phone, client(base) as laptop:
        await login(phone, EDITOR, PASSWORD)
        await login(laptop, EDITOR, PASSWORD)
        status, page = await form_post(
            laptop,
            "/admin/konto",
            "/admin/konto/passwort",
            current="falsch-falsch-falsch",
            new=new_password,
            repeat=new_password,
        )
        assert status == 422 and "bisherige Passwort stimmt nicht" in page
        status, page = await form_post(
            laptop,
            "/admin/konto",
            "/admin/konto/passwort",
            current=PASSWORD,
            new=new_password,
            repeat=new_password,
        )
        assert status == 200 and "Passwort geändert" in page
        async with laptop.get("/admin", allow_redirects=False) as answer:
            assert answer.status == 200  # this session goes on
        async with phone.get("/admin", allow_redirects=False) as answer:
            assert answer.status == 303  # the other one ended
    async with client(base) as http:
        assert (await login(http, EDITOR, PASSWORD))[0] == 401
        status, page = await login(http, EDITOR, new_password)
        assert status == 303, re.sub(r"\s+", " ", page)[:200]
