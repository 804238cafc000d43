"""The REST API against a real service on SQLite and PostgreSQL: bearer tokens, the four-eyes
lifecycle, ETags and stale edits, previews, subscribers, and problem+json for every error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import yaml
from argon2 import PasswordHasher
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.i18n import gettext, use_locale
from bzi_broadcast.service import Service
from bzi_broadcast.staff import accounts, workflow
from bzi_broadcast.staff.accounts import Role, add_user, create_api_token, user_by_email
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import api_tokens, audit_log, subscribers
from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import EXAMPLE
from .test_admin import PASSWORD, client, login, session_of
from .test_delivery import serving, settings_for

PROBLEM = "application/problem+json"
FUTURE = "2030-05-04T10:30:00+02:00"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Any
    body: Any

    @property
    def type(self) -> str:
        return str(self.headers.get("Content-Type", "")).split(";")[0]


@dataclass(frozen=True)
class Api:
    url: str
    tokens: dict[str, str]  # editor, publisher, other (a second publisher), admin

    async def call(
        self,
        method: str,
        path: str,
        who: str | None = "editor",
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        data: str | bytes | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.tokens[who]}"
        async with (
            aiohttp.ClientSession(self.url) as http,
            http.request(
                method, "/api/v1" + path, json=json_body, data=data, headers=sent
            ) as answer,
        ):
            raw = await answer.read()
            body: Any = raw.decode()
            if answer.content_type in ("application/json", PROBLEM) and raw:
                body = json.loads(raw)
            return Answer(answer.status, answer.headers, body)


def seed() -> dict[str, Any]:
    """The seed file as JSON, the way an API client would send it."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


@pytest.fixture
async def api(
    database_url: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    # argon2id at its real cost takes ~0.7 s per hash here; these tests are not about passwords
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024))
    tokens = {}
    for who, role in (
        ("editor", Role.EDITOR),
        ("publisher", Role.PUBLISHER),
        ("other", Role.PUBLISHER),
        ("admin", Role.ADMIN),
    ):
        email = f"{who}@bzi.example.org"
        await add_user(engine, email=email, name=who.title(), role=role, password=PASSWORD)
        user = await user_by_email(engine, email)
        assert user is not None
        tokens[who] = await create_api_token(engine, user, "test")
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
    ):
        yield Api(url, tokens)


async def actions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(audit_log.c.action))).scalars())


async def test_the_seed_file_as_json_becomes_a_draft(api: Api, engine: AsyncEngine) -> None:
    created = await api.call("POST", "/announcements", json_body=seed())
    assert created.status == 201, created.body
    new_id = created.body["id"]
    assert created.headers["Location"] == f"/api/v1/announcements/{new_id}"
    assert created.headers["ETag"] == '"1"'
    read = await api.call("GET", f"/announcements/{new_id}")
    assert read.status == 200
    assert read.headers["ETag"] == '"1"'
    assert read.body["status"] == "draft"
    assert read.body["version"] == 1
    assert read.body["author"]["name"] == "Editor"
    assert read.body["approval"] is None
    assert read.body["content"]["title"] == "Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"
    assert read.body["content"]["blocks"][1]["speaker"] == "Dr. Nergiz"
    assert "announcement.created" in await actions(engine)


async def test_wrong_types_are_named_by_their_field_path(api: Api) -> None:
    wrong = seed()
    wrong["blocks"][1]["speaker"] = 42
    wrong["hashtags"] = "Integration"
    answer = await api.call("POST", "/announcements", json_body=wrong)
    assert answer.status == 422
    assert answer.type == PROBLEM
    assert answer.body["status"] == 422
    assert answer.body["instance"] == "/api/v1/announcements"
    places = {(e["field"], e["pointer"]): e["detail"] for e in answer.body["errors"]}
    assert places[("blocks[1].speaker", "/blocks/1/speaker")] == "erwartet wird Text"
    assert ("hashtags", "/hashtags") in places
    missing = await api.call("POST", "/announcements", json_body={"title": "Nur ein Titel"})
    assert [e["field"] for e in missing.body["errors"]] == ["blocks"]


async def test_malformed_bodies_and_unknown_routes_are_problems(api: Api) -> None:
    broken = await api.call(
        "POST", "/announcements", data='{"title": ', headers={"Content-Type": "application/json"}
    )
    assert (broken.status, broken.type) == (400, PROBLEM)
    assert "Kein gültiges JSON" in broken.body["detail"]
    form = await api.call("POST", "/announcements", data="title=x")
    assert (form.status, form.type) == (415, PROBLEM)
    unknown = await api.call("GET", "/gibt-es-nicht")
    assert (unknown.status, unknown.type) == (404, PROBLEM)
    assert unknown.body["title"] == "Nicht gefunden"
    not_an_id = await api.call("GET", "/announcements/abc")
    assert (not_an_id.status, not_an_id.type) == (404, PROBLEM)
    huge_id = await api.call("GET", "/announcements/99999999999999999999999")
    assert huge_id.status == 404
    created = await api.call("POST", "/announcements", json_body=seed())
    padded = await api.call("GET", f"/announcements/000000000000000000000{created.body['id']}")
    assert padded.body["id"] == created.body["id"]
    wrong_method = await api.call("DELETE", "/announcements")
    assert (wrong_method.status, wrong_method.type) == (405, PROBLEM)
    assert set(wrong_method.headers["Allow"].split(", ")) == {"GET", "POST"}
    oversized = {**seed(), "summary": "x" * 300_000}
    too_large = await api.call("POST", "/announcements", json_body=oversized)
    assert (too_large.status, too_large.type) == (413, PROBLEM)
    english = await api.call("GET", "/gibt-es-nicht", headers={"Accept-Language": "en"})
    with use_locale("en"):
        assert english.body["title"] == gettext("Nicht gefunden")


async def test_text_the_database_cannot_hold_and_local_files_are_refused(api: Api) -> None:
    control = {**seed(), "title": "Titel\u0000mit Null"}
    answer = await api.call("POST", "/announcements", json_body=control)
    assert answer.status == 422
    assert [e["pointer"] for e in answer.body["errors"]] == ["/title"]
    surrogate = '{"title": "\\ud800", "blocks": []}'
    answer = await api.call(
        "POST", "/announcements", data=surrogate, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 422
    local = {**seed(), "image": {"src": "/etc/passwd", "alt": "Ein Bild"}}
    answer = await api.call("POST", "/announcements", json_body=local)
    assert answer.status == 422
    assert [e["field"] for e in answer.body["errors"]] == ["image.src"]


async def test_without_a_valid_token_nothing_is_answered(api: Api, engine: AsyncEngine) -> None:
    bare = await api.call("GET", "/announcements", who=None)
    assert (bare.status, bare.type) == (401, PROBLEM)
    assert bare.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = await api.call(
        "GET", "/announcements", who=None, headers={"Authorization": "Bearer bzi_erfunden"}
    )
    assert unknown.status == 401
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    async with engine.begin() as conn:
        await conn.execute(update(api_tokens).values(revoked_at=utcnow()))
    revoked = await api.call("GET", "/announcements")
    assert revoked.status == 401
    async with client(api.url) as http:
        await login(http, "editor@bzi.example.org", PASSWORD)
        session = session_of(http)
    assert session
    cookie_only = await api.call(
        "GET", "/announcements", who=None, headers={"Cookie": f"bzi_session={session}"}
    )
    assert cookie_only.status == 401
    assert "Cookie" in cookie_only.body["detail"]
    document = await api.call("GET", "/openapi.json", who=None)
    assert document.status == 200
    assert document.body["openapi"].startswith("3.1")


async def test_four_eyes_from_draft_to_scheduled(api: Api, engine: AsyncEngine) -> None:
    created = await api.call("POST", "/announcements", json_body=seed())
    path = f"/announcements/{created.body['id']}"
    submitted = await api.call("POST", f"{path}/submit")
    assert submitted.body["status"] == "in_review"
    assert submitted.body["submitted_by"]["name"] == "Editor"
    by_editor = await api.call("POST", f"{path}/approve", headers={"If-Match": '"1"'})
    assert (by_editor.status, by_editor.type) == (403, PROBLEM)
    unversioned = await api.call("POST", f"{path}/approve", "publisher")
    assert unversioned.status == 428
    approved = await api.call("POST", f"{path}/approve", "publisher", headers={"If-Match": '"1"'})
    assert approved.status == 200, approved.body
    assert approved.body["approval"]["by"]["name"] == "Publisher"
    too_early = await api.call(
        "POST", f"{path}/schedule", "publisher", json_body={"publish_at": "2020-01-01T10:00:00Z"}
    )
    assert too_early.status == 422
    assert too_early.body["errors"][0]["pointer"] == "/publish_at"
    naive = await api.call(
        "POST", f"{path}/schedule", "publisher", json_body={"publish_at": "2030-05-04T10:30"}
    )
    assert naive.status == 422
    scheduled = await api.call(
        "POST", f"{path}/schedule", "publisher", json_body={"publish_at": FUTURE}
    )
    assert scheduled.status == 200
    assert scheduled.body["status"] == "scheduled"
    assert scheduled.body["publish_at"] == "2030-05-04T08:30:00Z"
    status = await api.call("GET", f"{path}/status")
    assert (status.body["status"], status.body["channels"]) == ("scheduled", {})
    editor_cancel = await api.call("POST", f"{path}/cancel")
    assert editor_cancel.status == 403  # once approved, only a publisher cancels
    cancelled = await api.call("POST", f"{path}/cancel", "publisher")
    assert cancelled.body["status"] == "cancelled"
    again = await api.call("POST", f"{path}/cancel", "publisher")
    assert (again.status, again.type) == (409, PROBLEM)
    steps = {f"announcement.{s}" for s in ("in_review", "approved", "scheduled", "cancelled")}
    assert steps <= set(await actions(engine))


async def test_nobody_approves_their_own_announcement(api: Api) -> None:
    created = await api.call("POST", "/announcements", "publisher", json_body=seed())
    path = f"/announcements/{created.body['id']}"
    await api.call("POST", f"{path}/submit", "publisher")
    own = await api.call("POST", f"{path}/approve", "publisher", headers={"If-Match": '"1"'})
    assert own.status == 403
    assert "Vier-Augen-Prinzip" in own.body["detail"]
    other = await api.call("POST", f"{path}/approve", "other", headers={"If-Match": '"1"'})
    assert other.status == 200


async def test_an_edit_based_on_an_old_version_is_refused(api: Api) -> None:
    created = await api.call("POST", "/announcements", json_body=seed())
    path = f"/announcements/{created.body['id']}"
    changed = {**seed(), "title": "Neuer Titel"}
    unversioned = await api.call("PUT", path, json_body=changed)
    assert (unversioned.status, unversioned.type) == (428, PROBLEM)
    saved = await api.call("PUT", path, json_body=changed, headers={"If-Match": '"1"'})
    assert saved.status == 200
    assert saved.headers["ETag"] == '"2"'
    assert saved.body["content"]["title"] == "Neuer Titel"
    stale = await api.call("PUT", path, "admin", json_body=seed(), headers={"If-Match": '"1"'})
    assert (stale.status, stale.type) == (412, PROBLEM)
    assert (await api.call("GET", path)).body["content"]["title"] == "Neuer Titel"
    await api.call("POST", f"{path}/submit")
    await api.call("POST", f"{path}/approve", "publisher", headers={"If-Match": '"2"'})
    edited = await api.call("PUT", path, json_body=seed(), headers={"If-Match": '"2"'})
    assert edited.body["status"] == "draft"  # the approval covered the old text
    assert edited.body["approval"] is None


async def test_lists_filter_and_page(api: Api) -> None:
    ids = [(await api.call("POST", "/announcements", json_body=seed())).body["id"] for _ in "abc"]
    await api.call("POST", f"/announcements/{ids[0]}/submit")
    first = await api.call("GET", "/announcements?per_page=2")
    assert first.body["total"] == 3
    assert [item["id"] for item in first.body["items"]] == [ids[2], ids[1]]
    second = await api.call("GET", "/announcements?per_page=2&page=2")
    assert [item["id"] for item in second.body["items"]] == [ids[0]]
    in_review = await api.call("GET", "/announcements?status=in_review")
    assert [item["id"] for item in in_review.body["items"]] == [ids[0]]
    bad = await api.call("GET", "/announcements?status=irgendwas&per_page=1000")
    assert (bad.status, bad.type) == (400, PROBLEM)
    assert {e["parameter"] for e in bad.body["errors"]} == {"status", "per_page"}
    copied = await api.call("POST", f"/announcements/{ids[0]}/duplicate")
    assert copied.status == 201
    assert copied.body["status"] == "draft"
    assert copied.body["content"]["publish_at"] is None
    assert copied.headers["Location"] == f"/api/v1/announcements/{copied.body['id']}"


async def test_previews_count_characters_per_channel(api: Api) -> None:
    created = await api.call("POST", "/announcements", json_body=seed())
    preview = await api.call("POST", f"/announcements/{created.body['id']}/preview")
    assert preview.status == 200
    email, mastodon, telegram = (preview.body[c] for c in ("email", "mastodon", "telegram"))
    assert email["subject"] == "Weltoffene Kommunen – Vom Dialog zum Zusammenhalt"
    assert "Dr. Nergiz" in email["html"]
    assert "Dr. Nergiz" in email["text"]
    assert (mastodon["max_characters"], mastodon["from_instance"]) == (500, False)
    assert len(mastodon["posts"]) > 1
    for post in mastodon["posts"]:
        assert 0 < post["length"] <= post["limit"] == 500
    for message in telegram["messages"]:
        assert 0 < message["length"] <= message["limit"] == 4096
    unsaved = await api.call("POST", "/announcements/preview", json_body=seed())
    assert unsaved.body["email"]["html"] == email["html"]
    invalid = await api.call("POST", "/announcements/preview", json_body={"blocks": []})
    assert invalid.status == 422


async def test_markup_is_data_in_json_and_escaped_when_rendered(api: Api) -> None:
    script = "<script>alert('x')</script>"
    image = '<img src=x onerror="alert(1)">'
    content = seed()
    content["title"] = f"Titel {script}"
    content["blocks"][1]["speaker"] = image
    content["blocks"][1]["text"] = f"Zitat {script} & mehr"
    created = await api.call("POST", "/announcements", json_body=content)
    read = await api.call("GET", f"/announcements/{created.body['id']}")
    assert read.body["content"]["title"] == f"Titel {script}"
    assert read.body["content"]["blocks"][1]["speaker"] == image
    assert read.body["content"]["blocks"][1]["text"] == f"Zitat {script} & mehr"
    listed = await api.call("GET", "/announcements")
    assert listed.body["items"][0]["title"] == f"Titel {script}"
    preview = await api.call("POST", f"/announcements/{created.body['id']}/preview")
    html = preview.body["email"]["html"]
    assert "<script" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;" in html
    for message in preview.body["telegram"]["messages"]:
        assert "<script" not in message["text"]
        assert "<img" not in message["text"]


async def test_subscribers_import_list_export_erase(api: Api, engine: AsyncEngine) -> None:
    csv = (
        "email,consent_source,name,language,topics\n"
        "ada@example.org,Messestand 2025,Ada,de,kommunen\n"
        "kein-at-zeichen,Messestand 2025,,de,\n"
        "bob@example.org,Messestand 2025,Bob <b>,en,\n"
    )
    by_editor = await api.call("GET", "/subscribers")
    assert by_editor.status == 403
    imported = await api.call(
        "POST",
        "/subscribers/import",
        "publisher",
        data=csv,
        headers={"Content-Type": "text/csv"},
    )
    assert imported.status == 200, imported.body
    assert imported.body["imported"] == 2
    assert imported.body["skipped"] == 1
    assert imported.body["problems"][0]["line"] == 3
    assert "kein-at-zeichen" in imported.body["problems"][0]["detail"]
    listed = await api.call("GET", "/subscribers?q=ADA", "publisher")
    assert [s["email"] for s in listed.body["items"]] == ["ada@example.org"]
    ada = listed.body["items"][0]
    assert (ada["status"], ada["topics"], ada["telegram"]) == ("pending", ["kommunen"], False)
    assert "telegram_chat_id" not in ada
    wildcard = await api.call("GET", "/subscribers?q=%25", "publisher")
    assert wildcard.body["total"] == 0  # % is searched for, not a wildcard
    pending = await api.call("GET", "/subscribers?status=pending&per_page=1", "admin")
    assert (pending.body["total"], len(pending.body["items"])) == (2, 1)
    exported = await api.call("GET", "/subscribers/export", "publisher")
    assert [row["email"] for row in exported.body] == ["ada@example.org", "bob@example.org"]
    assert exported.body[1]["name"] == "Bob <b>"
    lines = await api.call("GET", "/subscribers/export?format=jsonl", "publisher")
    assert lines.type == "application/x-ndjson"
    assert [json.loads(line)["email"] for line in lines.body.splitlines()] == [
        "ada@example.org",
        "bob@example.org",
    ]
    erased = await api.call(
        "POST", "/subscribers/erase", "admin", json_body={"email": "Ada@Example.org"}
    )
    assert erased.status == 204
    gone = await api.call(
        "POST", "/subscribers/erase", "admin", json_body={"email": "ada@example.org"}
    )
    assert (gone.status, gone.type) == (404, PROBLEM)
    bob = (await api.call("GET", "/subscribers", "publisher")).body["items"][0]
    deleted = await api.call("DELETE", f"/subscribers/{bob['id']}", "admin")
    assert deleted.status == 204
    async with engine.connect() as conn:
        assert (await conn.execute(select(subscribers.c.id))).all() == []
    again = await api.call(
        "POST",
        "/subscribers/import",
        "publisher",
        data=csv,
        headers={"Content-Type": "text/csv"},
    )
    assert again.body["imported"] == 0  # erased addresses stay suppressed
    long_lines = "".join(f"p{i}@example.org,{'x' * 501}\n" for i in range(600))
    large = await api.call(
        "POST",
        "/subscribers/import",
        "publisher",
        data="email,consent_source\n" + long_lines,
        headers={"Content-Type": "text/csv"},
    )
    assert large.status == 200  # 300 KB: more than other requests may carry
    assert large.body["skipped"] == 600
    logged = await actions(engine)
    assert logged.count("subscriber.erased") == 2
    assert {"subscribers.imported", "subscribers.exported"} <= set(logged)


async def test_an_unexpected_error_is_a_problem_without_its_traceback(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("geheimes Innenleben")

    monkeypatch.setattr(workflow, "load", broken)
    answer = await api.call("GET", "/announcements/1")
    assert (answer.status, answer.type) == (500, PROBLEM)
    assert answer.body["detail"] == "Ein interner Fehler ist aufgetreten."
    assert "geheimes" not in json.dumps(answer.body)
    assert "geheimes Innenleben" in caplog.text  # logged for the operator, with the traceback


async def test_someone_who_only_uses_the_bot_can_be_erased_by_id(
    api: Api, engine: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(subscribers).values(
                email=None,
                telegram_chat_id=4711,
                language="de",
                status="active",
                source="bot",
                created_at=now,
                updated_at=now,
            )
        )
        person = int(result.inserted_primary_key[0])  # type: ignore[index]
    by_editor = await api.call("DELETE", f"/subscribers/{person}")
    assert by_editor.status == 403
    erased = await api.call("DELETE", f"/subscribers/{person}", "admin")
    assert erased.status == 204
    again = await api.call("DELETE", f"/subscribers/{person}", "admin")
    assert (again.status, again.type) == (404, PROBLEM)
    async with engine.connect() as conn:
        assert (await conn.execute(select(subscribers.c.id))).all() == []
