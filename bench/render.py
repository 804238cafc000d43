"""Benchmark: render the seed example for every channel.

Prints the median time per announcement (email + Mastodon + Telegram, each from a fresh call, no
caching of results) and, measured in the same run, a reference: the floor any Jinja2-based
renderer pays — one minimal template per channel printing the same words, without partials,
typography, CSS inlining or splitting. Target: ≤ 20 ms per announcement for all channels.

    .venv/bin/python -m bench.render [--rounds N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jinja2

from bzi_broadcast.content import Announcement, load_announcement
from bzi_broadcast.render import Renderer

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "examples" / "weltoffene-kommunen.yaml"
TARGET_MS = 20.0


def measure(work: Callable[[], object], rounds: int) -> list[float]:
    for _ in range(min(20, rounds)):
        work()  # warm caches (templates compiled, Markdown parsed) as a running service has them
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def reference(announcement: Announcement) -> Callable[[], object]:
    env = jinja2.Environment(autoescape=True)
    template = env.from_string(
        "<h1>{{ a.title }}</h1>{% for b in a.blocks %}<p>{{ b }}</p>{% endfor %}"
    )
    return lambda: [template.render(a=announcement) for _ in range(3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    rounds = parser.parse_args().rounds
    announcement = load_announcement(EXAMPLE)
    renderer = Renderer()
    ours = measure(lambda: renderer.render(announcement), rounds)
    ref = measure(reference(announcement), rounds)
    median, p95 = statistics.median(ours), statistics.quantiles(ours, n=20)[-1]
    ref_median = statistics.median(ref)
    print(
        f"bench/render  machine: {platform.machine()} {platform.processor() or ''} "
        f"python {platform.python_version()}  rounds: {rounds}"
    )
    print(
        f"  all channels, seed example: median {median:.2f} ms, p95 {p95:.2f} ms "
        f"(target ≤ {TARGET_MS:.0f} ms: {'met' if median <= TARGET_MS else 'MISSED'})"
    )
    print(f"  reference (bare Jinja2, 3 templates): median {ref_median:.3f} ms")
    print(
        f"  ratio ours/reference: {median / ref_median:.1f}×; ours/target: {median / TARGET_MS:.2f}"
    )


if __name__ == "__main__":
    main()
