"""The OpenAPI document: valid OpenAPI 3.1, exactly the routes the API serves, and kept by the
running service — Schemathesis sends generated requests (fitting and not fitting the document) to
every operation and checks that none fails with 5xx and every answer is documented."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
import yaml
from argon2 import PasswordHasher
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.content import load_announcement
from bzi_broadcast.service import Service
from bzi_broadcast.staff import accounts, workflow
from bzi_broadcast.staff.accounts import Role, add_user, create_api_token, user_by_email
from bzi_broadcast.store.schema import subscribers
from bzi_broadcast.subscribers.store import ImportReport, import_lines, parse_csv
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.web.api import API, OPENAPI
from bzi_broadcast.web.api_problems import STATUSES

from .conftest import EXAMPLE
from .test_delivery import serving, settings_for

# Per operation and generation mode (18 operations x 2 modes): about 15 s per database on an idle
# machine. BZI_API_FUZZ_EXAMPLES=200 searches far deeper (minutes).
EXAMPLES = int(os.environ.get("BZI_API_FUZZ_EXAMPLES", "8"))
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


def test_the_document_is_valid_and_lists_exactly_the_served_routes(tmp_path: Path) -> None:
    service = Service(settings_for(f"sqlite:///{tmp_path / 'x.sqlite3'}", 25))
    api = service.web[API]
    document = api[OPENAPI]
    validate(document)
    served = {
        (route.method, route.resource.canonical)
        for route in api.router.routes()
        if route.resource is not None
    }
    server = document["servers"][0]["url"]
    documented = {
        (method.upper(), server + path)
        for path, item in document["paths"].items()
        for method in item
    }
    assert served == documented
    assert len(served) == 18
    for path, item in document["paths"].items():
        for method, operation in item.items():
            secured = operation["security"] != []
            assert secured == (path != "/openapi.json"), (method, path)
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    assert int(status) in STATUSES
                    assert "application/problem+json" in answer["content"]


def test_request_bodies_are_the_announcement_model_with_its_definitions() -> None:
    from bzi_broadcast.content.model import Announcement
    from bzi_broadcast.web.api import ROUTES
    from bzi_broadcast.web.openapi import document

    built = document(ROUTES)
    schemas = built["components"]["schemas"]
    body = built["paths"]["/announcements"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/Announcement"}
    model = Announcement.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schemas["Announcement"] == {k: v for k, v in model.items() if k != "$defs"}
    for name, definition in model["$defs"].items():
        assert schemas[name] == definition
    assert "$defs" not in json.dumps(built)


async def _seed(engine: AsyncEngine) -> Seeded:
    """An editor's announcements in several states, some subscribers, and a publisher's token."""
    users = {}
    for who, role in (("editor", Role.EDITOR), ("publisher", Role.PUBLISHER)):
        email = f"{who}@bzi.example.org"
        await add_user(engine, email=email, name=who, role=role, password="x" * 12)
        user = await user_by_email(engine, email)
        assert user is not None
        users[who] = user
    editor = users["editor"]
    example = load_announcement(EXAMPLE).model_copy(update={"publish_at": None})
    ids = [await workflow.create(engine, example, editor) for _ in range(4)]
    for in_review in ids[1:]:
        await workflow.submit(engine, in_review, editor, version=1)
    await workflow.approve(engine, ids[3], users["publisher"], version=1)
    report = ImportReport()
    csv = "email,consent_source\n" + "".join(f"p{i}@example.org,Stand\n" for i in range(5))
    await import_lines(engine, list(parse_csv(csv, report)), report, b"k" * 32)
    async with engine.connect() as conn:
        people = list((await conn.execute(select(subscribers.c.id))).scalars())
    token = await create_api_token(engine, users["publisher"], "schemathesis")
    return Seeded(token=token, ids={"announcements": ids, "subscribers": people})


@dataclass(frozen=True)
class Seeded:
    token: str
    ids: dict[str, list[int]]  # existing ids, by the path's first part


def _cases(operation: Any, mode: GenerationMode, seeded: Seeded, document: dict[str, Any]) -> Any:
    """Generated requests, and as many again that name an id that exists (with its version as
    If-Match) and send the seed announcement as the body, so the handlers behind the 404s and
    422s are reached too (few generated announcements pass the model's validators)."""
    spec = document["paths"][operation.path][operation.method.lower()]
    fixed: dict[str, Any] = {}
    if any(parameter["name"] == "If-Match" for parameter in spec["parameters"]):
        fixed["headers"] = {"If-Match": '"1"'}
    body = spec.get("requestBody", {}).get("content", {}).get("application/json", {})
    if body.get("schema") == {"$ref": "#/components/schemas/Announcement"}:
        fixed["body"] = json.loads(json.dumps(yaml.safe_load(EXAMPLE.read_text()), default=str))
    variants = [fixed]
    if "{id}" in operation.path:
        existing = seeded.ids[operation.path.split("/")[1]]
        variants = [fixed | {"path_parameters": {"id": i}} for i in existing]
    strategies = [operation.as_strategy(generation_mode=mode)]
    strategies += [operation.as_strategy(generation_mode=mode, **v) for v in variants if v]
    return st.one_of(*strategies)


def _fuzz(document: dict[str, Any], base_url: str, seeded: Seeded) -> list[str]:
    """Every operation, in both generation modes; the failures as text (empty: none)."""
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {seeded.token}"}
    failures = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=_cases(operation, mode, seeded, document))
            def run(case: Any) -> None:
                case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to get wrong (no input at all)
            except Exception as exc:
                failures.append(f"{operation.label} ({mode}): {exc}")
    return failures


async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    database_url: str, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024))
    seeded = await _seed(engine)
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
    ):
        async with aiohttp.ClientSession(url) as http, http.get("/api/v1/openapi.json") as answer:
            document = await answer.json()
        failures = await asyncio.to_thread(_fuzz, document, url + "/api/v1", seeded)
    assert not failures, "\n\n".join(failures)
