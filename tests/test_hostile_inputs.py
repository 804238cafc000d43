"""The hostile-input suite (issue 13): whatever a client sends, the service answers with a 4xx,
never a 500 and never a traceback.

Part one pins the 500s the review found (item 10): malformed form bodies on every form, archive
numbers too large for the database, a pause date at the edge of the calendar. Part two throws
random values at every public and staff form (hypothesis), part three the OpenAPI document at the
API (schemathesis)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from .test_admin import PASSWORD, client
from .test_api import Api, api  # noqa: F401 - the fixture
from .test_editor import EDITOR, Site, example_fields, session, site  # noqa: F401 - the fixture
from .test_public_pages import CSRF, mails_to, path_of, sign_up

HUGE = "9" * 24  # beyond any integer column (SQLite and PostgreSQL: 8 bytes)

# Bodies aiohttp's form reader cannot parse: (Content-Type, body)
MALFORMED = [
    ("multipart/form-data; boundary=", b"--\r\n\r\n--\r\n"),  # the reviewed case
    ("multipart/form-data", b"csrf=x"),  # no boundary at all
    ("multipart/form-data; boundary=abc", b"not a multipart body"),
    (  # a part without a name
        "multipart/form-data; boundary=abc",
        b"--abc\r\nContent-Disposition: form-data\r\n\r\nx\r\n--abc--\r\n",
    ),
    (  # a part in a character set that does not exist
        "multipart/form-data; boundary=abc",
        b"--abc\r\nContent-Type: text/plain; charset=nope\r\n"
        b'Content-Disposition: form-data; name="csrf"\r\n\r\nx\r\n--abc--\r\n',
    ),
    (  # a part header that is no header (found by the random forms below)
        "multipart/form-data; boundary=abc",
        b'--abc\r\nContent-Disposition: form-data; name="csrf"\r\nX: a\x00b\r\n'
        b"\r\nx\r\n--abc--\r\n",
    ),
    ("application/x-www-form-urlencoded; charset=nope", b"csrf=x"),
]
PUBLIC_FORMS = [
    "/anmelden",
    "/abmelden/x",
    "/bestaetigen/x",
    "/einstellungen/x",
    "/admin/anmelden",
]
STAFF_FORMS = [
    "/admin/konto",
    "/admin/konto/passwort",
    "/admin/abmelden",
    "/admin/ankuendigungen/neu",
    "/admin/ankuendigungen/vorschau",
]


async def statuses(http: aiohttp.ClientSession, paths: list[str]) -> dict[tuple[str, int], int]:
    found = {}
    for path in paths:
        for number, (content_type, body) in enumerate(MALFORMED):
            headers = {"Content-Type": content_type}
            async with http.post(path, data=body, headers=headers, allow_redirects=False) as answer:
                text = await answer.text()
                assert "Traceback" not in text
                found[(path, number)] = answer.status
    return found


async def test_a_malformed_body_on_any_public_form_answers_400(site: Site) -> None:  # noqa: F811
    async with client(site.url) as http:
        found = await statuses(http, PUBLIC_FORMS)
    assert {key: status for key, status in found.items() if status != 400} == {}


async def test_a_malformed_body_on_any_staff_form_answers_400(site: Site) -> None:  # noqa: F811
    async with session(site, EDITOR) as http:
        found = await statuses(http, STAFF_FORMS)
    assert {key: status for key, status in found.items() if status != 400} == {}


@pytest.mark.parametrize(
    "path", [f"/archiv/{HUGE}", f"/archiv?seite={HUGE}", "/archiv/" + "9" * 5000]
)
async def test_archive_numbers_beyond_the_database_answer_404(
    site: Site,  # noqa: F811
    path: str,
) -> None:
    async with client(site.url) as http, http.get(path) as answer:
        assert answer.status == 404
        assert "Traceback" not in await answer.text()


@pytest.fixture
async def preferences(site: Site) -> AsyncIterator[tuple[aiohttp.ClientSession, str, str]]:  # noqa: F811
    """A confirmed subscriber's preferences page: the session, its path and a CSRF token."""
    async with client(site.url) as http:
        status, _page = await sign_up(http, email="dora@example.org")
        assert status == 200
        confirm = path_of((await mails_to(site.smtp, "dora@example.org"))[0], "bestaetigen")
        async with http.post(confirm) as answer:
            text = await answer.text()
        link = re.search(r'href="https?://[^/"]+(/einstellungen/[^"]+)"', text)
        assert link, text[:2000]
        found = link.group(1)
        async with http.get(found) as answer:
            token = CSRF.search(await answer.text())
        assert token
        yield http, found, token.group(1)


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31", "2000-01-01"])
async def test_a_pause_date_outside_the_sensible_range_answers_400(
    preferences: tuple[aiohttp.ClientSession, str, str], day: str
) -> None:
    http, path, token = preferences
    form = {"csrf": token, "language": "de", "paused_until": day}
    async with http.post(path, data=form) as answer:
        text = await answer.text()
        assert answer.status == 400, text[:500]
    assert "Bitte ein Datum zwischen" in text


# --- part two: random values at every form (hypothesis) ---------------------------------------

FORM_FIELDS = sorted(
    {name for name, _value in example_fields()}
    | {
        *("List-Unsubscribe", "action", "at", "channel", "code", "confirm", "consent", "csrf"),
        *("current", "delivery", "email", "language", "name", "new", "password"),
        *("paused_until", "repeat", "resubscribe", "role", "topics", "version"),
    }
)
ANNOUNCEMENT = "/admin/ankuendigungen/1"
STAFF_POSTS = [
    *STAFF_FORMS,
    "/admin/konto/telegram",
    "/admin/benutzer",
    "/admin/benutzer/1",
    "/admin/abonnenten/1/loeschen",
    ANNOUNCEMENT,
    *(f"{ANNOUNCEMENT}/{step}" for step in ("einreichen", "freigeben", "abbrechen")),
    *(
        f"{ANNOUNCEMENT}/versand/{action}"
        for action in ("wiederholen", "pausieren", "fortsetzen", "thread/rest", "thread/loeschen")
    ),
]
# text as people and attackers type it: any code point but surrogates, sometimes long
VALUES = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    st.sampled_from(
        ["", "0", "-1", HUGE, "0001-01-01", "9999-12-31T23:59", "ja", "de", "x" * 5000]
    ),
)
FORMS = st.lists(
    st.tuples(st.one_of(st.sampled_from(FORM_FIELDS), st.text(max_size=20)), VALUES), max_size=12
)


def post_forms(base: str, paths: list[str], login: tuple[str, str] | None) -> list[str]:
    """Random forms, each with the session's valid CSRF token (so handlers get past the check)
    and sent as urlencoded or multipart; the requests that answered 5xx."""
    http = requests.Session()
    if login is not None:
        page_text = http.get(f"{base}/admin/anmelden", timeout=10).text
        token = _csrf_of(page_text)
        answer = http.post(
            f"{base}/admin/anmelden",
            data={"csrf": token, "email": login[0], "password": login[1]},
            allow_redirects=False,
            timeout=10,
        )
        assert answer.status_code == 303
    source = "/admin/konto" if login else "/anmelden"
    token = _csrf_of(http.get(f"{base}{source}", timeout=10).text)
    failures: list[str] = []

    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate,),
    )
    @given(path=st.sampled_from(paths), fields=FORMS, multipart=st.booleans(), csrf=st.booleans())
    def check(path: str, fields: list[tuple[str, str]], multipart: bool, csrf: bool) -> None:
        sent = [("csrf", token), *fields] if csrf else fields
        if multipart:
            files = [(name, (None, value.encode("utf-8", "surrogatepass"))) for name, value in sent]
            answer = http.post(f"{base}{path}", files=files, allow_redirects=False, timeout=30)
        else:
            answer = http.post(f"{base}{path}", data=sent, allow_redirects=False, timeout=30)
        if answer.status_code >= 500 or "Traceback" in answer.text:
            failures.append(f"{answer.status_code} POST {path} {sent!r:.300}")

    check()
    return failures


def _csrf_of(text: str) -> str:
    found = CSRF.search(text)
    assert found, text[:500]
    return found.group(1)


async def test_random_public_forms_never_answer_5xx(site: Site) -> None:  # noqa: F811
    paths = [*PUBLIC_FORMS, "/abmelden/" + "A" * 60, "/einstellungen/" + HUGE]
    assert await asyncio.to_thread(post_forms, site.url, paths, None) == []


async def test_random_preferences_of_a_real_subscriber_never_answer_5xx(
    site: Site,  # noqa: F811
    preferences: tuple[aiohttp.ClientSession, str, str],
) -> None:
    """With a valid link, so the values reach the date parsing and the subscriber's update."""
    _http, path, _token = preferences
    assert await asyncio.to_thread(post_forms, site.url, [path], None) == []


async def test_random_staff_forms_never_answer_5xx(site: Site) -> None:  # noqa: F811
    login = (EDITOR, PASSWORD)
    assert await asyncio.to_thread(post_forms, site.url, STAFF_POSTS, login) == []


# --- part three: the OpenAPI document at the API (schemathesis) -------------------------------


def run_schemathesis(base: str, token: str) -> list[str]:
    """Every operation of the served document with generated requests: no 5xx, and every answer
    as the document describes it."""
    headers = {"Authorization": f"Bearer {token}"}
    document = requests.get(f"{base}/api/v1/openapi.json", headers=headers, timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    answered: set[int] = set()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema fails here

        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.generate,),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=f"{base}/api/v1", headers=headers, timeout=30)
            answered.add(response.status_code)
            try:
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance]
                )
            except (AssertionError, BaseExceptionGroup) as exc:  # one failure, or a group
                failures.append(f"{case.method} {case.formatted_path}: {exc!s:.500}")

        check()
    assert 200 in answered and 401 not in answered, answered  # the token let every call in
    return failures


async def test_the_api_holds_to_its_openapi_document(api: Api) -> None:  # noqa: F811
    failures = await asyncio.to_thread(run_schemathesis, api.url, api.tokens["admin"])
    assert failures == [], "\n".join(failures[:20])
