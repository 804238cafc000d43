"""Login refusals give nothing away: unknown, wrong and locked answer alike after the same work
(one argon2 verification each); a lockout doubles only up to a cap; one address trying many
accounts is stopped by its own limit without locking those accounts for everyone else."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bzi_broadcast.config import SecuritySettings
from bzi_broadcast.staff import accounts
from bzi_broadcast.staff.accounts import LoginRefused, Role, add_user, authenticate, change_user
from bzi_broadcast.store.announcements import utcnow
from bzi_broadcast.store.schema import users

from .test_admin import CSRF, PASSWORD, base, client, login  # noqa: F401 - base is a fixture

WRONG = "falsch-falsch-falsch"
ATTACKER, COLLEAGUE = "203.0.113.7", "198.51.100.20"


def security(**values: Any) -> SecuritySettings:
    defaults = {
        "login_attempts": 3,
        "lockout_minutes": 5,
        "lockout_max_minutes": 60,
        "login_attempts_per_ip": 50,
    }
    return SecuritySettings.model_validate(defaults | values)


class CountingHasher(PasswordHasher):
    calls = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        type(self).calls += 1
        return super().verify(hash, password)


async def staff(engine: AsyncEngine, *names: str) -> list[str]:
    addresses = [f"{name}@bzi.example.org" for name in names]
    for name, email in zip(names, addresses, strict=True):
        await add_user(engine, email=email, name=name, role=Role.EDITOR, password=PASSWORD)
    return addresses


async def refused(
    engine: AsyncEngine, settings: SecuritySettings, email: str, password: str, ip: str = ATTACKER
) -> LoginRefused:
    with pytest.raises(LoginRefused) as caught:
        await authenticate(engine, settings, email, password, ip)
    return caught.value


async def locked_until(engine: AsyncEngine, email: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(select(users.c.locked_until).where(users.c.email == email))
        ).scalar()


def normalised(page: str, email: str) -> str:
    page = re.sub(r'name="csrf" value="[^"]+"', 'name="csrf" value=""', page)
    return page.replace(email, "ADDRESS")


async def test_unknown_wrong_and_locked_get_the_same_page(base: str) -> None:  # noqa: F811
    async with client(base) as http:
        for _attempt in range(5):  # the default: five failures lock Eva's account
            await login(http, "eva@bzi.example.org", WRONG)
        unknown = await login(http, "niemand@bzi.example.org", WRONG)
        wrong = await login(http, "ada@bzi.example.org", WRONG)
        locked = await login(http, "eva@bzi.example.org", PASSWORD)  # right, but locked
    assert unknown[0] == wrong[0] == locked[0] == 401
    assert (
        normalised(unknown[1], "niemand@bzi.example.org")
        == normalised(wrong[1], "ada@bzi.example.org")
        == normalised(locked[1], "eva@bzi.example.org")
    )
    assert "Zu viele Fehlversuche" not in locked[1]


async def test_every_refusal_costs_one_argon2_verification(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    [eva] = await staff(engine, "eva")
    settings = security()
    for _attempt in range(3):
        await refused(engine, settings, eva, WRONG)
    assert await locked_until(engine, eva) is not None
    hasher = CountingHasher()
    monkeypatch.setattr(accounts, "_HASHER", hasher)
    for email, password in (("niemand@bzi.example.org", WRONG), (eva, WRONG), (eva, PASSWORD)):
        before = CountingHasher.calls
        await refused(engine, settings, email, password)
        assert CountingHasher.calls == before + 1, email


async def test_a_lockout_doubles_up_to_the_cap_and_an_admin_lifts_it(engine: AsyncEngine) -> None:
    [eva] = await staff(engine, "eva")
    [ada] = await staff(engine, "ada")
    settings = security(login_attempts=2, lockout_minutes=5, lockout_max_minutes=60)
    lengths = []
    for _lockout in range(7):
        for _attempt in range(2):
            await refused(engine, settings, eva, WRONG, ip=f"192.0.2.{_lockout}")
        start = utcnow()
        until = await locked_until(engine, eva)
        assert until is not None
        lengths.append(round((until - start) / timedelta(minutes=1)))
        async with engine.begin() as conn:  # the lock runs out
            await conn.execute(update(users).where(users.c.email == eva).values(locked_until=start))
    assert lengths == [5, 10, 20, 40, 60, 60, 60]
    for _attempt in range(2):
        await refused(engine, settings, eva, WRONG)
    admin = await authenticate(engine, settings, ada, PASSWORD, COLLEAGUE)
    async with engine.connect() as conn:
        eva_id = (await conn.execute(select(users.c.id).where(users.c.email == eva))).scalar()
    await change_user(engine, admin, int(eva_id or 0), role=None, unlock=True)
    assert (await authenticate(engine, settings, eva, PASSWORD, COLLEAGUE)).email == eva


async def test_one_address_trying_many_accounts_is_stopped_without_locking_them(
    engine: AsyncEngine,
) -> None:
    people = await staff(engine, "eva", "ada", "paul", "pia")
    settings = security(login_attempts=5, login_attempts_per_ip=6)
    for email in people * 2:  # eight guesses, two per account: the address's limit is six
        await refused(engine, settings, email, WRONG)
    blocked = await refused(engine, settings, people[0], PASSWORD)  # even the right one now
    assert blocked.retry_after is not None and 0 < blocked.retry_after <= 15 * 60
    for _attempt in range(20):  # hammering one account from the blocked address
        await refused(engine, settings, people[1], WRONG)
    for email in people:  # nobody is locked: colleagues elsewhere log in
        assert await locked_until(engine, email) is None
        assert (await authenticate(engine, settings, email, PASSWORD, COLLEAGUE)).email == email


async def test_an_ipv6_client_counts_as_its_whole_network(engine: AsyncEngine) -> None:
    [eva] = await staff(engine, "eva")
    settings = security(login_attempts=50, login_attempts_per_ip=3)
    for host in range(3):
        await refused(engine, settings, eva, WRONG, ip=f"2001:db8:1:2::{host + 1}")
    blocked = await refused(engine, settings, eva, PASSWORD, ip="2001:db8:1:2:ffff::9")
    assert blocked.retry_after is not None
    assert (await authenticate(engine, settings, eva, PASSWORD, "2001:db8:1:3::1")).email == eva


async def test_a_busy_address_gets_429_with_retry_after(base: str) -> None:  # noqa: F811
    async with client(base) as http:
        for number in range(20):  # the default limit, spread over addresses nobody has
            status, _page = await login(http, f"rate{number}@bzi.example.org", WRONG)
            assert status == 401
        async with http.get("/admin/anmelden") as answer:
            token = CSRF.search(await answer.text())
        assert token
        form = {"csrf": token.group(1), "email": "eva@bzi.example.org", "password": PASSWORD}
        async with http.post("/admin/anmelden", data=form, allow_redirects=False) as answer:
            assert answer.status == 429
            assert 0 < int(answer.headers["Retry-After"]) <= 15 * 60
            assert "Zu viele Fehlversuche von Ihrem Anschluss" in await answer.text()
