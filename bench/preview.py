"""Benchmark: the editor's live preview, as a browser asks for it while one types.

Starts a real service (``Service``, SQLite in a temporary directory, an SMTP capture for the
start-up check, Mastodon off so the preview splits with the default limits) in a process of its
own, logs editors in over HTTP and measures round trips of ``POST /admin/ankuendigungen/vorschau``
— the seed example as the editor's multipart form, CSRF token included — from sending to the
whole fragment received:
  1. one editor, back to back: median and p95, and what a typist sees: the debounce of
     ``/static/admin.js`` + the median, from the last keystroke to the preview;
  2. ``--editors`` editors at once, one session each: median, p95 and previews/s, once back to
     back (each asks again as soon as its answer is in: the capacity) and once at typing pace
     (each asks once per debounce, the most ``admin.js`` asks for while one types on).
Reference, measured in the same run (one after each single-editor round trip, while the service
idles): ``Renderer.render(announcement)`` in this process, the bare rendering cost every preview
pays. Target: a preview under 100 ms median, so it feels live.

    .venv/bin/python -m bench.preview [--rounds N] [--typing-rounds N] [--editors 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
from multidict import MultiDict

from bzi_broadcast.config import Settings
from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.render import Renderer
from bzi_broadcast.service import Service
from bzi_broadcast.staff.accounts import Role, add_user
from bzi_broadcast.store.engine import create_engine, migrate
from bzi_broadcast.testing.smtp import SmtpCapture
from bzi_broadcast.web import editor_form, editor_problems

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "weltoffene-kommunen.yaml"
ADMIN_JS = ROOT / "bzi_broadcast" / "web" / "static" / "admin.js"
PREVIEW = "/admin/ankuendigungen/vorschau"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
PASSWORD = "bench-passwort-lang-genug"
TARGET_MS = 100.0
WARM_UP = 20
Fields = list[tuple[str, str]]


# --- the service, in a process of its own (the browser is not in the server's event loop) --------


def settings_for(database_url: str, smtp_port: int) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "database": base.database.model_copy(update={"url": database_url}),
            "web": base.web.model_copy(update={"port": 0}),
            "smtp": base.smtp.model_copy(update={"port": smtp_port}),
        }
    )


def serve(database_url: str, pipe: Connection) -> None:
    """The child process: runs the service until SIGTERM; sends its web port once it listens."""
    asyncio.run(_serve(database_url, pipe))


async def _serve(database_url: str, pipe: Connection) -> None:
    async with SmtpCapture() as smtp:
        service = Service(settings_for(database_url, smtp.port))
        service.install_signal_handlers()
        running = asyncio.create_task(service.run())
        ready = asyncio.create_task(service.ready.wait())
        await asyncio.wait((running, ready), return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            ready.cancel()
            await running  # start-up failed: its error ends this process
        pipe.send(service.web_port)
        await running


def start_service(database_url: str) -> tuple[multiprocessing.process.BaseProcess, int]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=False)
    process = context.Process(target=serve, args=(database_url, theirs), daemon=True)
    process.start()
    if not ours.poll(60):
        process.kill()
        sys.exit("bench/preview: the service did not start (its error is above)")
    return process, int(ours.recv())


async def add_editors(database_url: str, count: int) -> list[str]:
    engine = create_engine(database_url)
    await migrate(engine)
    emails = [f"editor{i}@bzi.example.org" for i in range(count)]
    for i, email in enumerate(emails):
        await add_user(engine, email=email, name=f"Editor {i}", role=Role.EDITOR, password=PASSWORD)
    await engine.dispose()
    return emails


# --- the form, as the browser sends it ---------------------------------------------------------


def form_fields(announcement: Announcement) -> Fields:
    """The editor's inputs filled with ``announcement`` (what ``new FormData(form)`` holds, the
    image file and the button taken out as ``admin.js`` does; textareas with CR LF breaks)."""
    state = editor_form.from_announcement(announcement)
    fields = [(name, state[name]) for name in editor_form.TEXT_FIELDS]
    fields += [("topics", topic) for topic in state["topics"]]
    fields += [(name, "ja") for name in editor_form.CHECKBOXES if state[name]]
    for index, block in enumerate(state["blocks"]):
        fields += _block_fields(f"blocks-{index}-", block)
    return [(name, value.replace("\n", "\r\n")) for name, value in fields]


def _block_fields(prefix: str, block: editor_form.State) -> Fields:
    kind = block["type"]
    fields = [(f"{prefix}type", kind)]
    fields += [(prefix + name, block[name]) for name in editor_form.BLOCK_FIELDS[kind]]
    items = editor_form.ITEMS_OF.get(kind)
    if items is None:
        return fields
    for index, item in enumerate(block[items]):
        names = editor_form.ITEM_FIELDS[items]
        fields += [(f"{prefix}{items}-{index}-{name}", item[name]) for name in names]
    return fields


def check_same(fields: Fields, announcement: Announcement) -> None:
    """The form must describe the announcement the reference renders, or the ratio means nothing."""
    posted, errors = editor_problems.validate(editor_form.from_post(MultiDict(fields)))
    if posted != announcement:
        sys.exit(f"bench/preview: the form fields do not give the seed example back: {errors}")


def debounce_ms() -> float:
    found = re.search(r"var DELAY_MS = (\d+);", ADMIN_JS.read_text(encoding="utf-8"))
    if found is None:
        sys.exit("bench/preview: DELAY_MS not found in admin.js")
    return float(found.group(1))


# --- the client --------------------------------------------------------------------------------


class Editor:
    """One logged-in browser session with the editor page's CSRF token."""

    def __init__(self, base: str, fields: Fields) -> None:
        self.http = aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.fields = fields
        self.token = ""

    async def login(self, email: str) -> None:
        form = {"csrf": await self._token("/admin/anmelden"), "email": email, "password": PASSWORD}
        async with self.http.post("/admin/anmelden", data=form, allow_redirects=False) as answer:
            if answer.status != 303:
                sys.exit(f"bench/preview: login of {email} answered {answer.status}")
        self.token = await self._token("/admin/ankuendigungen/neu")

    async def _token(self, path: str) -> str:
        async with self.http.get(path) as answer:
            found = CSRF.search(await answer.text())
        if found is None:
            sys.exit(f"bench/preview: no CSRF token on {path}")
        return found.group(1)

    async def preview(self) -> tuple[float, bytes]:
        """One round trip: milliseconds from sending to the whole fragment received."""
        data = aiohttp.FormData([("csrf", self.token), *self.fields])
        start = time.perf_counter()
        async with self.http.post(
            PREVIEW, data=data, headers={"X-Requested-With": "fetch"}, allow_redirects=False
        ) as answer:
            body = await answer.read()
        elapsed = (time.perf_counter() - start) * 1000
        if answer.status != 200:
            sys.exit(f"bench/preview: the preview answered {answer.status}: {body[:300]!r}")
        return elapsed, body

    async def previews(self, rounds: int) -> list[float]:
        return [(await self.preview())[0] for _ in range(rounds)]

    async def close(self) -> None:
        await self.http.close()


async def editors_at(base: str, fields: Fields, emails: list[str]) -> list[Editor]:
    editors = [Editor(base, fields) for _ in emails]
    for editor, email in zip(editors, emails, strict=True):
        await editor.login(email)
        _elapsed, fragment = await editor.preview()
        if b"pv-email" not in fragment or b"preview-problems" in fragment:
            sys.exit("bench/preview: the answer is not a full preview of every channel")
        await editor.previews(WARM_UP)
    return editors


@dataclass(frozen=True, kw_only=True)
class Rounds:
    alone: int
    typing: int


@dataclass(frozen=True, kw_only=True)
class Load:
    timings: list[float]  # every editor's round trips, ms
    wall: float  # seconds from the first sent to the last received

    @property
    def rate(self) -> float:
        return len(self.timings) / self.wall


@dataclass(frozen=True, kw_only=True)
class Result:
    alone: list[float]  # one editor, back to back, ms per round trip
    reference: list[float]  # Renderer.render in process, ms, one after each of those
    back_to_back: Load  # every editor asks again as soon as its answer is in: the capacity
    typing: Load  # every editor asks once per debounce, as the fastest typist makes admin.js ask
    fragment: int  # bytes of one preview fragment


async def together(editors: list[Editor], rounds: int, pause: float) -> Load:
    """Every editor's ``rounds`` previews at once; with a ``pause`` (seconds) after each answer,
    the editors start spread over one pause so that they do not ask in lockstep."""

    async def one(index: int, editor: Editor) -> list[float]:
        await asyncio.sleep(pause * index / len(editors))
        timings = []
        for _ in range(rounds):
            timings.append((await editor.preview())[0])
            await asyncio.sleep(pause)  # the typist types on; admin.js waits for a pause
        return timings

    start = time.perf_counter()
    timings = await asyncio.gather(*(one(i, e) for i, e in enumerate(editors)))
    return Load(timings=[ms for own in timings for ms in own], wall=time.perf_counter() - start)


async def alone_and_reference(
    editor: Editor, reference: Callable[[], object], rounds: int
) -> tuple[list[float], list[float]]:
    """One editor's round trips, each followed by one reference rendering here while the service
    idles: both see the same load of the machine, so their ratio holds when the load drifts."""
    for _ in range(WARM_UP):
        reference()
    alone, bare = [], []
    for _ in range(rounds):
        alone.append((await editor.preview())[0])
        start = time.perf_counter()
        reference()
        bare.append((time.perf_counter() - start) * 1000)
    return alone, bare


async def run(
    base: str, fields: Fields, emails: list[str], rounds: Rounds, reference: Callable[[], object]
) -> Result:
    editors = await editors_at(base, fields, emails)
    try:
        _elapsed, fragment = await editors[0].preview()
        alone, bare = await alone_and_reference(editors[0], reference, rounds.alone)
        back_to_back = await together(editors, rounds.alone, 0.0)
        typing = await together(editors, rounds.typing, debounce_ms() / 1000)
    finally:
        for editor in editors:
            await editor.close()
    return Result(
        alone=alone,
        reference=bare,
        back_to_back=back_to_back,
        typing=typing,
        fragment=len(fragment),
    )


# --- the report --------------------------------------------------------------------------------


def p95(timings: list[float]) -> float:
    return statistics.quantiles(timings, n=20)[-1]


def verdict(median: float) -> str:
    return "met" if median < TARGET_MS else "MISSED"


def report(result: Result, editors: int, fields: Fields) -> None:
    median, ref = statistics.median(result.alone), statistics.median(result.reference)
    delay = debounce_ms()
    size = sum(len(name) + len(value.encode()) for name, value in fields)
    print(
        f"bench/preview  machine: {platform.machine()} {os.cpu_count()} cores, "
        f"python {platform.python_version()}  rounds: {len(result.alone)} per editor"
    )
    print(
        f"  seed example: {len(fields) + 1} form fields, {size:,} B typed; "
        f"fragment {result.fragment:,} B"
    )
    print(
        f"  1 editor: median {median:.1f} ms, p95 {p95(result.alone):.1f} ms "
        f"(target < {TARGET_MS:.0f} ms median: {verdict(median)})"
    )
    print(
        f"  typist: last keystroke → preview = debounce {delay:.0f} ms + median {median:.1f} ms "
        f"= {delay + median:.0f} ms"
    )
    for name, load in (("back to back", result.back_to_back), ("typing", result.typing)):
        at, worst = statistics.median(load.timings), p95(load.timings)
        print(
            f"  {editors} editors at once, {name}: median {at:.1f} ms, p95 {worst:.1f} ms "
            f"({verdict(at)}), {load.rate:.1f} previews/s"
        )
    print(
        f"  reference (Renderer.render in process): median {ref:.2f} ms, "
        f"p95 {p95(result.reference):.2f} ms; at most {1000 / ref:.0f} renderings/s on one core"
    )
    print(
        f"  ratio preview/reference: {median / ref:.2f}×; preview/target: {median / TARGET_MS:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200, help="round trips per editor")
    parser.add_argument(
        "--typing-rounds", type=int, default=60, help="previews per editor at typing pace"
    )
    parser.add_argument("--editors", type=int, default=8, help="editors previewing at once")
    args = parser.parse_args()
    announcement = load_announcement(EXAMPLE)
    fields = form_fields(announcement)
    check_same(fields, announcement)
    rounds = Rounds(alone=args.rounds, typing=args.typing_rounds)
    renderer = Renderer(Settings())  # what the service renders with
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite3"
        emails = asyncio.run(add_editors(url, args.editors))
        process, port = start_service(url)
        try:
            base = f"http://127.0.0.1:{port}"
            result = asyncio.run(
                run(base, fields, emails, rounds, lambda: renderer.render(announcement))
            )
        finally:
            process.terminate()
            process.join(30)
    report(result, args.editors, fields)


if __name__ == "__main__":
    main()
