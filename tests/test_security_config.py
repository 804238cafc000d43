"""Security settings (issue 13, items 1, 7 and 12): no public signing key, proxy headers only
from trusted proxies, ``/metrics`` behind a bearer token."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import Settings, WebSettings, load_settings
from bzi_broadcast.errors import ConfigError
from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.schema import consent_events, subscribers
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.tokens import TokenSigner

from .conftest import EXAMPLE
from .test_delivery import serving, settings_for, wait_until
from .test_public_pages import CSRF, sign_up, status_of

OLD_PUBLIC_DEFAULT = b"demo-secret-change-me-demo-secret-change-me"
KEY_HINT = 'python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
PROXY = "127.0.0.1"  # the test client connects from here: it plays the reverse proxy
REAL_CLIENT = "203.0.113.9"
METRICS_TOKEN = "metrics-token-for-the-test-scraper-0123456789"


def command(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``bzi-broadcast *args`` with no configuration but a database in ``workdir`` and a public
    HTTPS address (as in production)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BZI_")}
    return subprocess.run(
        [sys.executable, "-m", "bzi_broadcast", *args],
        capture_output=True,
        text=True,
        env={
            **clean,
            "BZI_DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "BZI_EMAIL_PUBLIC_URL": "https://bzi.example.org",
            **env,
        },
        cwd=workdir,
        timeout=60,
    )


# --- 1: the signing key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("serve",),
        ("queue", str(EXAMPLE), "--now"),
        ("subscribers", "import", "people.csv"),
        ("subscribers", "erase", "anna@example.org"),
    ],
)
def test_commands_that_sign_refuse_to_start_without_a_key(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    (tmp_path / "people.csv").write_text("email\nanna@example.org\n", encoding="utf-8")
    result = command(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("security.secret_key:"), lines
    assert KEY_HINT in lines[0]
    assert "BZI_SECURITY_SECRET_KEY_FILE" in lines[0]
    assert not (tmp_path / "db.sqlite3").exists()  # refused before anything was done


# --- issue 15: links in mails over HTTPS to a public name ----------------------------------------

KEY = "k" * 48


@pytest.mark.parametrize(
    "url",
    [
        "http://bzi.example.org",
        "https://localhost:8080",
        "https://news.localhost",
        "https://127.0.0.1",
        "https://[::1]:8443",
        "https://10.1.2.3",
        "https://0.0.0.0",
        "bzi.example.org",
    ],
)
@pytest.mark.parametrize("args", [("serve",), ("queue", str(EXAMPLE), "--now")])
def test_an_http_or_local_public_url_is_refused_outside_the_demo(
    tmp_path: Path, url: str, args: tuple[str, ...]
) -> None:
    result = command(tmp_path, *args, BZI_SECURITY_SECRET_KEY=KEY, BZI_EMAIL_PUBLIC_URL=url)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"email.public_url (aus BZI_EMAIL_PUBLIC_URL): „{url}“"), line
    assert "https://" in line and "email.allow_insecure_public_url = true" in line
    assert not (tmp_path / "db.sqlite3").exists()  # refused before anything was done


def test_the_public_url_problem_names_its_line_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bzi.toml"
    config.write_text('[email]\nfrom_name = "BZI"\npublic_url = "http://127.0.0.1:8080"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {"BZI_SECURITY_SECRET_KEY": KEY}, public=True)
    assert caught.value.message.startswith(f"email.public_url ({config}, Zeile 3): „http://")


def test_https_on_a_public_name_or_an_explicit_test_setup_is_accepted() -> None:
    environ = {"BZI_SECURITY_SECRET_KEY": KEY}
    for url in ("https://bzi.example.org", "https://bzi.example.org:8443/newsletter"):
        settings = load_settings(None, {**environ, "BZI_EMAIL_PUBLIC_URL": url}, public=True)
        assert settings.email.public_url == url
    insecure = {**environ, "BZI_EMAIL_ALLOW_INSECURE_PUBLIC_URL": "true"}
    assert load_settings(None, insecure, public=True).email.public_url == "http://127.0.0.1:8080"
    # commands that put no link into mails (status, migrate, the web of the demo) don't ask
    assert load_settings(None, environ).email.public_url == "http://127.0.0.1:8080"


def test_the_demo_serves_its_links_from_localhost_without_complaint(tmp_path: Path) -> None:
    """``serve --demo`` is refused nothing for its http://127.0.0.1 links: a wrong port ends it
    after the settings were accepted (the refusal would come first and name email.public_url)."""
    result = command(
        tmp_path, "serve", "--demo", "--port", "99999", BZI_EMAIL_PUBLIC_URL="http://127.0.0.1"
    )
    assert "email.public_url" not in result.stderr, result.stderr


def test_an_unreadable_key_file_is_reported_once(tmp_path: Path) -> None:
    result = command(tmp_path, "serve", BZI_SECURITY_SECRET_KEY_FILE=str(tmp_path / "nope"))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"BZI_SECURITY_SECRET_KEY_FILE: Datei {tmp_path / 'nope'} nicht lesbar")


def test_a_key_under_32_bytes_is_refused_in_any_mode(tmp_path: Path) -> None:
    short = "k" * 31
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BZI_SECURITY_SECRET_KEY": short})
    message = caught.value.message
    assert message.startswith("security.secret_key: zu kurz: mindestens 32 Bytes"), message
    assert "BZI_SECURITY_SECRET_KEY" in message
    assert short not in message
    assert load_settings(None, {"BZI_SECURITY_SECRET_KEY": "k" * 32}).security.secret_key
    (tmp_path / "key").write_text(short + "\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_settings(None, {"BZI_SECURITY_SECRET_KEY_FILE": str(tmp_path / "key")})
    result = command(tmp_path, "serve", "--demo", BZI_SECURITY_SECRET_KEY=short)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("security.secret_key: zu kurz")
    assert short not in result.stderr


def test_the_demo_key_is_random_per_data_directory_persisted_and_private(
    tmp_path: Path,
) -> None:
    from bzi_broadcast.demo import STATE_FILE, DemoState

    first = DemoState.load_or_create(tmp_path / "a")
    other = DemoState.load_or_create(tmp_path / "b")
    assert len(first.secret_key.encode()) >= 32
    assert first.secret_key != other.secret_key
    assert first.secret_key.encode() != OLD_PUBLIC_DEFAULT
    assert DemoState.load_or_create(tmp_path / "a").secret_key == first.secret_key
    for directory in ("a", "b"):
        mode = stat.S_IMODE((tmp_path / directory / STATE_FILE).stat().st_mode)
        assert mode == 0o600, oct(mode)


def test_the_demo_state_file_is_never_readable_by_others_while_written(tmp_path: Path) -> None:
    from bzi_broadcast.demo import STATE_FILE, DemoState

    state = DemoState.load_or_create(tmp_path)
    (tmp_path / STATE_FILE).unlink()
    seen: list[int] = []
    original = Path.chmod

    def spy(path: Path, mode: int, **kwargs: Any) -> None:
        seen.append(stat.S_IMODE(path.stat().st_mode))  # before any chmod narrows it
        original(path, mode, **kwargs)

    old_umask = os.umask(0o022)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Path, "chmod", spy)
            state.save(tmp_path)
    finally:
        os.umask(old_umask)
    assert all(mode & 0o077 == 0 for mode in seen), [oct(m) for m in seen]
    assert stat.S_IMODE((tmp_path / STATE_FILE).stat().st_mode) == 0o600


async def test_a_confirm_token_forged_with_the_old_default_confirms_nothing(
    database_url: str, engine: AsyncEngine
) -> None:
    unkeyed = Settings().model_copy(
        update={"database": Settings().database.model_copy(update={"url": database_url})}
    )
    with pytest.raises(ConfigError) as caught:
        Service(unkeyed, engine=engine)
    assert caught.value.message.startswith("security.secret_key:")
    async with (
        SmtpCapture() as smtp,
        serving(Service(settings_for(database_url, smtp.port))) as url,
        session(url) as http,
    ):
        status, _page = await sign_up(http, email="fresh@example.org")
        assert status == 200
        subscriber_id = await wait_until(lambda: _id_of(engine, "fresh@example.org"))
        forged = TokenSigner(OLD_PUBLIC_DEFAULT).sign(
            purpose="confirm", subject=str(subscriber_id), ttl=timedelta(hours=1)
        )
        async with http.post(f"/bestaetigen/{forged}") as answer:
            text = await answer.text()
            assert answer.status == 400, text
            assert "Anmeldung bestätigt" not in text
    assert await status_of(engine, "fresh@example.org") == "pending"


async def _id_of(engine: AsyncEngine, email: str) -> int | None:
    async with engine.connect() as conn:
        found = await conn.execute(select(subscribers.c.id).where(subscribers.c.email == email))
        return found.scalar()


# --- 7: proxy headers ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def site(database_url: str, **web: Any) -> AsyncIterator[str]:
    """The service with ``web`` settings validated as an operator's file would be."""
    async with SmtpCapture() as smtp:
        base = settings_for(database_url, smtp.port)
        settings = base.model_copy(
            update={
                "web": WebSettings.model_validate({"port": 0, **web}),
                "subscribers": base.subscribers.model_copy(update={"ip_logging": "full"}),
            }
        )
        async with serving(Service(settings)) as url:
            yield url


def session(url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_a_spoofed_leftmost_forwarded_for_does_not_escape_the_sign_up_limit(
    database_url: str,
) -> None:
    async with site(database_url, trusted_proxies=[PROXY]) as url, session(url) as http:
        statuses = []
        for n in range(12):
            # what the client sent, then what the trusted proxy appended: the real address
            spoofed = {"X-Forwarded-For": f"198.51.100.{n}, {REAL_CLIENT}"}
            http.headers.update(spoofed)
            statuses.append((await sign_up(http, email=f"p{n}@example.org"))[0])
    assert statuses == [200] * 10 + [429, 429]


async def test_the_consent_proof_stores_the_real_client_address(
    database_url: str, engine: AsyncEngine
) -> None:
    async with site(database_url, trusted_proxies=["10.0.0.0/8", PROXY]) as url:
        async with session(url) as http:
            # client → proxy 10.1.2.3 → proxy 127.0.0.1 → service; the client lied to the first
            http.headers["X-Forwarded-For"] = f"6.6.6.6, {REAL_CLIENT}, 10.1.2.3"
            assert (await sign_up(http, email="ip@example.org"))[0] == 200
        await wait_until(lambda: _ip_of(engine, "ip@example.org"))
    assert await _ip_of(engine, "ip@example.org") == REAL_CLIENT


async def _ip_of(engine: AsyncEngine, email: str) -> str | None:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(consent_events.c.ip)
            .join(subscribers, subscribers.c.id == consent_events.c.subscriber_id)
            .where(subscribers.c.email == email, consent_events.c.event == "signed_up")
        )
        return found.scalar()


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    database_url: str, engine: AsyncEngine
) -> None:
    async with site(database_url, trusted_proxies=["10.0.0.0/8"]) as url, session(url) as http:
        http.headers.update({"X-Forwarded-For": REAL_CLIENT, "X-Forwarded-Proto": "https"})
        async with http.get("/anmelden") as answer:
            assert not answer.cookies["csrf"]["secure"]
        assert (await sign_up(http, email="direct@example.org"))[0] == 200
        await wait_until(lambda: _ip_of(engine, "direct@example.org"))
    assert await _ip_of(engine, "direct@example.org") == PROXY


async def test_behind_a_trusted_tls_proxy_the_session_cookie_is_secure(
    database_url: str, engine: AsyncEngine
) -> None:
    await add_user(engine, email=STAFF, name="Eva", role=Role.EDITOR, password=PASSWORD)
    async with site(database_url, trusted_proxies=[PROXY]) as url:
        async with session(url) as http:
            http.headers["X-Forwarded-Proto"] = "https"
            async with http.get("/anmelden?lang=en") as answer:
                assert answer.cookies["csrf"]["secure"]
                assert answer.cookies["lang"]["secure"]
            assert (await _session_cookie(http))["secure"]
        async with session(url) as http:  # plain http through the same proxy: not Secure
            assert not (await _session_cookie(http))["secure"]


STAFF, PASSWORD = "eva@bzi.example.org", "korrekt-pferd-batterie"


async def _session_cookie(http: aiohttp.ClientSession) -> Any:
    """Log in; the session cookie as set (the client keeps Secure cookies to itself on http)."""
    async with http.get("/admin/anmelden") as answer:
        token = CSRF.search(await answer.text())
        nonce = answer.cookies["csrf"].value
    assert token
    data = {"csrf": token.group(1), "email": STAFF, "password": PASSWORD}
    async with http.post(
        "/admin/anmelden", data=data, cookies={"csrf": nonce}, allow_redirects=False
    ) as answer:
        assert answer.status == 303, await answer.text()
        return answer.cookies["bzi_session"]


def test_trust_proxy_is_refused_with_the_replacement_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BZI_WEB_TRUST_PROXY": "true", "BZI_SECURITY_SECRET_KEY": "k" * 32})
    assert caught.value.message.startswith("web.trust_proxy:"), caught.value.message
    assert "web.trusted_proxies" in caught.value.message
    assert load_settings(None, {"BZI_WEB_TRUST_PROXY": "false"}) == load_settings(None, {})
    found = load_settings(None, {"BZI_WEB_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8, ::1"})
    assert [str(n) for n in found.web.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BZI_WEB_TRUSTED_PROXIES": "proxy.example.org"})
    assert caught.value.message.startswith("web.trusted_proxies.0: keine IP-Adresse")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "1.1.1.1, 203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.5", "203.0.113.9"),
        ("127.0.0.1", "10.0.0.6, 10.0.0.5", "10.0.0.6"),  # only proxies: the farthest
        ("127.0.0.1", "203.0.113.9, not-an-address, 10.0.0.5", "10.0.0.5"),
        ("127.0.0.1", "2001:db8::7", "2001:db8::7"),
        ("198.51.100.1", "203.0.113.9", "198.51.100.1"),  # the peer is no proxy of ours
        ("127.0.0.1", ",,", "127.0.0.1"),
    ],
)
def test_the_client_is_the_rightmost_hop_that_is_no_trusted_proxy(
    peer: str, forwarded: str | None, client: str
) -> None:
    from bzi_broadcast.web.app import client_address

    web = WebSettings.model_validate({"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]})
    assert client_address(peer, forwarded, web.trusted_proxies) == client


# --- 12: /metrics --------------------------------------------------------------------------------


async def test_metrics_without_a_token_are_not_served_and_startup_warns(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bzi_broadcast"):
        async with site(database_url) as url, session(url) as http:
            async with http.get("/metrics") as answer:
                assert answer.status == 404
            async with http.get(
                "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
            ) as answer:
                assert answer.status == 404
    warnings = [r.getMessage() for r in caplog.records if "metrics" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "web.metrics_token" in warnings[0]


async def test_metrics_need_the_configured_bearer_token(database_url: str) -> None:
    async with site(database_url, metrics_token=METRICS_TOKEN) as url, session(url) as http:
        async with http.get("/metrics") as answer:
            assert answer.status == 401
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        for wrong in (f"Bearer {METRICS_TOKEN}x", "Bearer ", f"Basic {METRICS_TOKEN}", "Bearer"):
            async with http.get("/metrics", headers={"Authorization": wrong}) as answer:
                assert answer.status == 401, wrong
                assert answer.headers["WWW-Authenticate"].startswith("Bearer"), wrong
                assert "bzi_" not in await answer.text()
        async with http.get(
            "/metrics", headers={"Authorization": f"bearer {METRICS_TOKEN}"}
        ) as answer:
            assert answer.status == 200
            assert "# TYPE bzi_deliveries gauge" in await answer.text()


async def test_metrics_stay_open_in_the_demo(database_url: str) -> None:
    from bzi_broadcast.web import operations

    async with SmtpCapture() as smtp:
        service = Service(
            settings_for(database_url, smtp.port), extra_setups=[operations.open_metrics]
        )
        async with serving(service) as url, session(url) as http, http.get("/metrics") as answer:
            assert answer.status == 200


def test_the_metrics_token_comes_from_a_file_and_is_masked(tmp_path: Path) -> None:
    (tmp_path / "metrics").write_text(METRICS_TOKEN + "\n", encoding="utf-8")
    settings = load_settings(None, {"BZI_WEB_METRICS_TOKEN_FILE": str(tmp_path / "metrics")})
    token = settings.web.metrics_token
    assert isinstance(token, SecretStr)
    assert token.get_secret_value() == METRICS_TOKEN
    assert METRICS_TOKEN not in repr(settings) + str(settings)
    assert METRICS_TOKEN in settings.secrets()
    for guessable in ("", "kurz"):  # an empty token would let an empty bearer in
        with pytest.raises(ConfigError) as caught:
            load_settings(None, {"BZI_WEB_METRICS_TOKEN": guessable})
        assert caught.value.message.startswith("web.metrics_token: zu kurz: mindestens 16 Bytes")
