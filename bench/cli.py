"""Benchmark: how long the command line takes to answer, as a script or a monitoring check runs it.

Times ``bzi-broadcast --version`` (the parser alone) and ``bzi-broadcast --config … status
--json`` (settings, the database engine and three queries) against a migrated SQLite database
in a temporary directory holding a few announcements: one sending to 50 subscribers (one
delivery claimed, the email channel paused), one scheduled, one draft. Each command is a fresh
process, as in use; the commands take turns round by round, after a warm-up, so a busy machine
slows all of them alike. Reference, measured in the same rounds: ``python -c pass`` (the
interpreter's start, which no command can beat). Prints the median and the fastest wall time,
the median CPU time (user + system, steadier when other work shares the cores) and the ratio to
the reference. Target: each command ≤ 0.3 s wall.

Bytecode is cached as in an installed package (pip compiles it, the container image too), in a
``PYTHONPYCACHEPREFIX`` of the temporary directory: the warm-up writes it, the checkout stays
clean. ``--compile-each-run`` measures instead with ``PYTHONDONTWRITEBYTECODE`` and no cache, as
in a development shell that sets it (every module without a ``__pycache__`` is compiled at each
start). ``--checkout DIR`` measures another copy of the code (e.g. ``git archive <commit>``
unpacked) by putting it first on ``PYTHONPATH``: the "before" figures of bench/RESULTS.md.

    .venv/bin/python -m bench.cli [--rounds 20] [--checkout DIR] [--compile-each-run]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "weltoffene-kommunen.yaml"
TARGET_S = 0.3
WARM_UP = 3
SUBSCRIBERS = 50


@dataclass(frozen=True)
class Timing:
    """One command's runs: wall and CPU seconds, in the order measured."""

    wall: list[float]
    cpu: list[float]

    def line(self, name: str, reference: Timing | None) -> str:
        wall, cpu = statistics.median(self.wall), statistics.median(self.cpu)
        text = (
            f"  {name:<24} median {wall * 1000:6.0f} ms  fastest {min(self.wall) * 1000:6.0f} ms"
            f"  CPU {cpu * 1000:5.0f} ms"
        )
        if reference is None:
            return text
        ratio = wall / statistics.median(reference.wall)
        met = "met" if wall <= TARGET_S else "MISSED"
        return f"{text}  {ratio:4.1f}× the reference  target ≤ {TARGET_S:.1f} s: {met}"


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of ``command``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def measure(commands: dict[str, list[str]], env: dict[str, str], rounds: int) -> dict[str, Timing]:
    """Every command once per round, in turn; the first ``WARM_UP`` rounds are not counted (they
    fill the page cache and write the bytecode of a fresh checkout)."""
    timings = {name: Timing(wall=[], cpu=[]) for name in commands}
    for round_ in range(WARM_UP + rounds):
        for name, command in commands.items():
            wall, cpu = run_once(command, env)
            if round_ >= WARM_UP:
                timings[name].wall.append(wall)
                timings[name].cpu.append(cpu)
    return timings


async def fill(url: str) -> None:
    """Migrate and add what ``status`` reports on: a sending, a scheduled and a draft
    announcement, deliveries in two states and a paused channel. Run in a child process with the
    measured code on its path (``--fill``), so a ``--checkout`` migrates to its own schema."""
    from sqlalchemy import insert

    from bzi_broadcast.content import load_announcement
    from bzi_broadcast.delivery import control
    from bzi_broadcast.delivery.lifecycle import AnnouncementStatus
    from bzi_broadcast.delivery.outbox import Outbox
    from bzi_broadcast.delivery.release import release
    from bzi_broadcast.store.announcements import Announcements
    from bzi_broadcast.store.engine import create_engine, migrate
    from bzi_broadcast.store.schema import subscribers

    engine = create_engine(url)
    try:
        await migrate(engine)
        now = datetime.now(UTC)
        people = [
            {"email": f"person{i}@example.org", "language": "de", "status": "active"}
            | {"source": "bench", "created_at": now, "updated_at": now}
            for i in range(SUBSCRIBERS)
        ]
        async with engine.begin() as conn:
            await conn.execute(insert(subscribers), people)
        store = Announcements(engine)
        example = load_announcement(EXAMPLE)
        scheduled = AnnouncementStatus.SCHEDULED
        sending = await store.create(example, actor="bench", status=scheduled, publish_at=now)
        await release(engine, sending)
        await Outbox(engine, worker_id="bench", lease=timedelta(minutes=5)).claim("email", 1)
        await control.set_paused(engine, "email", True, "bench")
        later = now + timedelta(days=7)
        await store.create(example, actor="bench", status=scheduled, publish_at=later)
        await store.create(example, actor="bench")
    finally:
        await engine.dispose()


def environment(checkout: Path | None, pycache: Path | None) -> dict[str, str]:
    """The caller's environment without its ``BZI_*`` settings (the config file decides);
    bytecode cached under ``pycache``, or never written when that is None."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BZI_")}
    env.pop("PYTHONPYCACHEPREFIX", None)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="counted runs of each command")
    parser.add_argument("--checkout", type=Path, help="measure this copy of the code instead")
    parser.add_argument(
        "--compile-each-run", action="store_true", help="no bytecode cache (a development shell)"
    )
    parser.add_argument("--fill", metavar="URL", help=argparse.SUPPRESS)  # the child's task
    options = parser.parse_args()
    if options.fill:
        asyncio.run(fill(options.fill))
        return
    python = sys.executable
    script = str(Path(python).with_name("bzi-broadcast"))
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        database = Path(tmp) / "bzi.sqlite3"
        config = Path(tmp) / "bzi-broadcast.toml"
        config.write_text(f'[database]\nurl = "sqlite:///{database}"\n', encoding="utf-8")
        pycache = None if options.compile_each_run else Path(tmp) / "pycache"
        env = environment(options.checkout, pycache)
        # Not from ROOT: ``-m`` puts the working directory first on the path, before a checkout.
        filling = [python, "-m", "bench.cli", "--fill", f"sqlite:///{database}"]
        bench_too = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
        subprocess.run(filling, env={**env, "PYTHONPATH": bench_too}, cwd=tmp, check=True)
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "bzi-broadcast --version": [script, "--version"],
            "status --json": [script, "--config", str(config), "status", "--json"],
        }
        load = os.getloadavg()[0]
        timings = measure(commands, env, options.rounds)
    code = options.checkout or ROOT
    bytecode = "compiled at each run" if pycache is None else "cached"
    print(
        f"bench/cli  machine: {platform.machine()} {os.cpu_count()} cores  "
        f"python {platform.python_version()}  checkout {code}  bytecode {bytecode}  "
        f"rounds: {options.rounds} after {WARM_UP} warm-up  load average at start: {load:.2f}"
    )
    reference = timings.pop("python -c pass")
    print(reference.line("python -c pass", None) + "  (reference)")
    for name, timing in timings.items():
        print(timing.line(name, reference))


if __name__ == "__main__":
    main()
