"""One permission table for every door: the web workspace, the REST API and the command line.

The walk asks every route of the running app (web and API) as every role and compares the kind
of answer with ``staff.permissions``; a route the table does not name fails it. The findings of
the review are tested one by one.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.delivery.lifecycle import AnnouncementStatus as S
from bzi_broadcast.service import Service
from bzi_broadcast.staff import accounts, permissions, workflow
from bzi_broadcast.staff.accounts import (
    Role,
    User,
    add_user,
    create_api_token,
    start_session,
    user_by_email,
)
from bzi_broadcast.staff.permissions import Action, Operator
from bzi_broadcast.store.engine import create_engine, migrate
from bzi_broadcast.store.schema import audit_log, subscribers
from bzi_broadcast.testing.smtp import SmtpCapture

from .test_admin import CSRF, PASSWORD
from .test_api import FUTURE, Api, api, seed  # noqa: F401  (api: the fixture)
from .test_delivery import example_announcement, serving, settings_for
from .test_operations import cli
from .test_store import add_subscribers

ROLES: tuple[Role | None, ...] = (None, Role.EDITOR, Role.PUBLISHER, Role.ADMIN)
STEP = re.compile(r"\(\?P<step>([^)]*)\)")


# --- the findings -------------------------------------------------------------------------------


async def test_only_an_admin_erases_a_subscriber_through_the_api(
    api: Api,  # noqa: F811
    engine: AsyncEngine,
) -> None:
    await add_subscribers(engine, 1)
    person = (await api.call("GET", "/subscribers", "publisher")).body["items"][0]
    deleted = await api.call("DELETE", f"/subscribers/{person['id']}", "publisher")
    assert deleted.status == 403
    by_address = await api.call(
        "POST", "/subscribers/erase", "publisher", json_body={"email": person["email"]}
    )
    assert by_address.status == 403
    async with engine.connect() as conn:
        assert (await conn.execute(select(subscribers.c.id))).scalars().all() == [person["id"]]
    assert (await api.call("DELETE", f"/subscribers/{person['id']}", "admin")).status == 204


async def test_an_editor_cannot_stop_a_scheduled_send_by_editing_it(
    api: Api,  # noqa: F811
) -> None:
    created = await api.call("POST", "/announcements", json_body=seed())
    path = f"/announcements/{created.body['id']}"
    await api.call("POST", f"{path}/submit")
    await api.call("POST", f"{path}/approve", "publisher", headers={"If-Match": '"1"'})
    await api.call("POST", f"{path}/schedule", "publisher", json_body={"publish_at": FUTURE})
    edited = await api.call("PUT", path, json_body=seed(), headers={"If-Match": '"1"'})
    assert edited.status == 403, edited.body
    assert "Versand stoppen" in edited.body["detail"]
    assert (await api.call("GET", path)).body["status"] == "scheduled"
    by_publisher = await api.call(
        "PUT", path, "publisher", json_body=seed(), headers={"If-Match": '"1"'}
    )
    assert by_publisher.status == 200
    assert by_publisher.body["status"] == "draft"


async def test_an_editor_cannot_cancel_someone_elses_submission(
    api: Api,  # noqa: F811
) -> None:
    created = await api.call("POST", "/announcements", "publisher", json_body=seed())
    path = f"/announcements/{created.body['id']}"
    await api.call("POST", f"{path}/submit", "publisher")
    cancelled = await api.call("POST", f"{path}/cancel")
    assert cancelled.status == 403, cancelled.body
    assert (await api.call("GET", path)).body["status"] == "in_review"
    assert (await api.call("POST", f"{path}/cancel", "other")).status == 200


async def test_an_editor_cannot_send_back_a_scheduled_announcement(engine: AsyncEngine) -> None:
    editor = await _person(engine, "eva", Role.EDITOR)
    publisher = await _person(engine, "paul", Role.PUBLISHER)
    draft_id = await workflow.create(engine, example_announcement(), editor)
    await workflow.submit(engine, draft_id, editor, version=1)
    await workflow.approve(engine, draft_id, publisher, version=1)
    await workflow.schedule(
        engine, draft_id, publisher, datetime(2030, 5, 4, tzinfo=UTC), version=1
    )
    with pytest.raises(workflow.NotAllowed):
        await workflow.return_to_draft(engine, draft_id, editor, version=1)
    assert (await workflow.load(engine, draft_id)).status == S.SCHEDULED


async def test_the_cli_cancels_through_the_workflow_as_the_audited_operator(
    engine: AsyncEngine, database_url: str
) -> None:
    editor = await _person(engine, "eva", Role.EDITOR)
    draft_id = await workflow.create(engine, example_announcement(), editor)
    result = await asyncio.to_thread(cli, database_url, "cancel", str(draft_id))
    assert result.returncode == 0, result.stderr
    assert (await workflow.load(engine, draft_id)).status == S.CANCELLED
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_log.c.user_id, audit_log.c.detail).where(
                    audit_log.c.action == "announcement.cancelled"
                )
            )
        ).all()
    assert len(rows) == 1
    assert rows[0].user_id is None
    assert json.loads(rows[0].detail)["id"] == draft_id
    assert json.loads(rows[0].detail)["operator"]


def test_the_operator_may_everything_and_anonymous_only_the_public_doors() -> None:
    for action in Action:
        assert permissions.may(Operator(name="root"), action)
        assert permissions.may(None, action) == (permissions.least_role(action) is None)


async def _person(engine: AsyncEngine, name: str, role: Role) -> User:
    email = f"{name}@bzi.example.org"
    await add_user(engine, email=email, name=name.title(), role=role, password=PASSWORD)
    user = await user_by_email(engine, email)
    assert user is not None
    return user


# --- every route × every role -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class World:
    """A running service with one person per role, and things for the routes' ids to name."""

    url: str
    service: Service
    engine: AsyncEngine
    people: dict[Role, User]
    tokens: dict[Role, str]
    announcement_id: int  # written and submitted by someone who is none of the people above
    subscriber_id: int
    colleague_id: int


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024))
    database_url = f"sqlite:///{tmp_path / 'walk.sqlite3'}"
    engine = create_engine(database_url)
    await migrate(engine)
    people = {role: await _person(engine, str(role), role) for role in Role}
    tokens = {role: await create_api_token(engine, user, "walk") for role, user in people.items()}
    author = await _person(engine, "autor", Role.EDITOR)
    announcement_id = await workflow.create(engine, example_announcement(), author)
    await workflow.submit(engine, announcement_id, author, version=1)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        subscriber = await conn.execute(
            insert(subscribers).values(
                email="p@example.org",
                language="de",
                status="active",
                source="test",
                created_at=now,
                updated_at=now,
            )
        )
    try:
        async with SmtpCapture() as smtp:
            service = Service(settings_for(database_url, smtp.port))
            async with serving(service) as url:
                yield World(
                    url=url,
                    service=service,
                    engine=engine,
                    people=people,
                    tokens=tokens,
                    announcement_id=announcement_id,
                    subscriber_id=int(subscriber.inserted_primary_key[0]),  # type: ignore[index]
                    colleague_id=author.id,
                )
    finally:
        await engine.dispose()


def _routes(world: World) -> list[tuple[str, str]]:
    """Every (method, pattern) of the app and the API, a step route once per step."""
    found: set[tuple[str, str]] = set()
    for route in world.service.web.router.routes():
        if route.method == "HEAD":
            continue
        pattern = route.resource.canonical if route.resource else ""
        info = route.resource.get_info() if route.resource else {}
        steps = STEP.search(info["pattern"].pattern) if "pattern" in info else None
        if steps:
            for step in steps.group(1).split("|"):
                found.add((route.method, pattern.replace("{step}", step)))
        else:
            found.add((route.method, pattern))
    return sorted(found)


def _concrete(world: World, pattern: str) -> str:
    if pattern == "/static":
        return "/static/admin.js"
    ids = (
        world.subscriber_id
        if "abonnenten" in pattern or "subscribers" in pattern
        else world.colleague_id
        if "benutzer" in pattern
        else world.announcement_id
    )
    return pattern.replace("{id}", str(ids)).replace("{token}", "x")


def _kind(path: str, status: int, location: str) -> str:
    if path.startswith("/api/"):
        return {401: "login", 403: "forbidden"}.get(status, "allowed")
    if status == 303 and location.startswith("/admin/anmelden"):
        return "login"
    return "forbidden" if status == 403 else "allowed"


async def _expected(world: World, role: Role | None, action: Action, path: str) -> str:
    actor = world.people[role] if role else None
    subject = None
    if "ankuendigungen/{id}" in path or "announcements/{id}" in path:
        subject = await workflow.load(world.engine, world.announcement_id)
    if permissions.may(actor, action, subject):
        return "allowed"
    return "login" if actor is None else "forbidden"


async def _ask(
    world: World, http: aiohttp.ClientSession, csrf: tuple[str, str], role: Role | None, route: str
) -> tuple[int, str]:
    method, pattern = route.split(" ", 1)
    path = _concrete(world, pattern)
    headers = {"Cookie": f"csrf={csrf[0]}"}
    if role is not None and path.startswith("/api/"):
        headers["Authorization"] = f"Bearer {world.tokens[role]}"
    elif role is not None:
        session = await start_session(world.engine, world.people[role], 1)
        headers["Cookie"] += f"; bzi_session={session}"
    data = None if path.startswith("/api/") else {"csrf": csrf[1]}
    async with http.request(
        method, path, headers=headers, data=data, allow_redirects=False
    ) as answer:
        await answer.read()
        return answer.status, answer.headers.get("Location", "")


async def test_every_route_answers_every_role_as_the_permission_table_says(world: World) -> None:
    routes = [f"{method} {pattern}" for method, pattern in _routes(world)]
    missing = [route for route in routes if route not in permissions.ROUTES]
    assert not missing, f"routes without an entry in staff.permissions.ROUTES: {missing}"
    wrong: list[str] = []
    async with aiohttp.ClientSession(world.url, cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get("/admin/anmelden") as form:
            token = CSRF.search(await form.text())
            nonce = form.cookies["csrf"].value
        assert token
        for role in ROLES:
            for route in routes:
                method, pattern = route.split(" ", 1)
                action = permissions.route_action(method, pattern)
                expected = await _expected(world, role, action, pattern)
                status, location = await _ask(world, http, (nonce, token.group(1)), role, route)
                kind = _kind(pattern, status, location)
                if permissions.least_role(action) is None and kind == "login":
                    kind = "allowed"  # signing out leads to the login page, as it should
                if kind != expected or status >= 500:
                    wrong.append(
                        f"{role or 'anonymous'} {route}: {status} ({kind}, not {expected})"
                    )
    assert not wrong, "\n".join(wrong)
