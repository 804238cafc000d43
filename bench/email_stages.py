"""Time per message by stage, from py-spy's collapsed stacks (``py-spy record --format raw``).

Each sample is one thread's stack at one instant (100 per second); py-spy leaves out threads it
sees sleeping, but a thread blocked on a queue's lock in C (aiosqlite's connection thread, the
rendering thread pool) still looks busy to it, so those waits are dropped here by their leaf
frame. What remains is the time a thread was running or ready to run: on a machine shared with
other work it includes waiting for a core, so compare shares within one run and absolute figures
only between runs under the same load.

A sample belongs to the first stage (in the order of ``STAGES``) with a marker anywhere in its
stack: the sending coroutine's frames are on the stack while it runs, so the SMTP client's time
is the time spent below ``SmtpPool.send`` plus aiosmtplib's protocol callbacks, and the worker's
own time is what is left below ``delivery/worker.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# (stage, markers): a frame containing any marker puts the sample into the stage
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("claim", ("Outbox.claim ",)),
    ("outcome write", ("Outbox.record ", "_write_outcomes ", "write_outcomes")),
    ("rendering (once per announcement)", ("EmailChannel.prepare ",)),
    ("DKIM", ("sign_dkim ", "dkim/", "channels/dkim.py", "cryptography/")),
    (
        "per-recipient fill",
        (
            "MessageTemplate.",
            "email_mime.py",
            "EmailChannel._link ",
            "EmailChannel._data ",
            "TokenSigner.",
            "link_subject ",
        ),
    ),
    ("SMTP client", ("SmtpPool.", "aiosmtplib/", "_transaction ", "channels/smtp.py", "smtp_wire")),
    ("worker: cancel check", ("Worker._still_sending ",)),
    ("rate limit (shared, in the database)", ("delivery/ratelimit.py", "rate_slots.py")),
    ("scheduler, sweeps, web", ("apscheduler/", "Scheduler.", "_housekeeping", "aiohttp/")),
    ("SQLite statements (aiosqlite thread)", ("_connection_worker_thread ",)),
    ("worker loop (gather, outcomes, metrics)", ("delivery/worker.py",)),
    ("database driver (asyncpg, SQLAlchemy)", ("asyncpg/", "sqlalchemy/")),
)
OTHER = "event loop and other"
# leaf frames that are a thread waiting for work, not working
IDLE_LEAVES = (
    "_connection_worker_thread (aiosqlite/core.py:59)",  # tx.get()
    "_worker (concurrent/futures/thread.py:81)",  # work_queue.get(block=True)
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
)


def read_stacks(paths: list[Path]) -> Counter[str]:
    samples: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples[stack] += int(count)
    return samples


def stage_of(stack: str) -> str | None:
    """The stage of one sample, or None for a thread waiting for work."""
    if stack.rsplit(";", 1)[-1].startswith(IDLE_LEAVES):
        return None
    for stage, markers in STAGES:
        if any(marker in stack for marker in markers):
            return stage
    return OTHER


def stages(paths: list[Path]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for stack, count in read_stacks(paths).items():
        stage = stage_of(stack)
        if stage is not None:
            totals[stage] += count
    return totals


def stage_table(paths: list[Path], messages: int, rate: int) -> str:
    """A Markdown table: samples and µs per message for every stage, largest first."""
    totals = stages(paths)
    whole = sum(totals.values())
    lines = ["| stage | samples | µs per message | share |", "|---|---|---|---|"]
    order = [name for name, _ in STAGES] + [OTHER]
    for name in sorted(order, key=lambda n: -totals[n]):
        count = totals[name]
        lines.append(
            f"| {name} | {count} | {count / rate / messages * 1e6:.0f} | {count / whole:.1%} |"
        )
    lines.append(f"| all | {whole} | {whole / rate / messages * 1e6:.0f} | 100% |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("messages", type=int)
    parser.add_argument("stacks", type=Path, nargs="+")
    parser.add_argument("--rate", type=int, default=100)
    args = parser.parse_args()
    print(stage_table(args.stacks, args.messages, args.rate))
