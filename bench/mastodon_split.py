"""Benchmark: splitting hostile text into a Mastodon thread.

Two inputs from issue 12: one 80,000-character word (no space, no URL: cut at grapheme
boundaries) and a 2,000-character quote ×50 (an announcement with 50 quote blocks of 2,000
characters each, 100,000 characters of prose). For each, the median time per render through
``Renderer().mastodon`` on an announcement (template, tidying, splitting, counting every post) and
of ``split_thread`` alone; then the growth with size: a word of 10k, 20k, 40k and 80k characters,
each time divided by the one for half the size (≈ 2 means linear, ≈ 4 quadratic); and, beyond
the issue, the URL regex's worst case: 80,000 characters of "a.a.a…" glued to a URL.
Reference, measured in the same run on the same texts: plain grapheme counting
(``regex.findall(r"\\X", text)``), the least any exact splitter has to do. Target: the word in
≤ 0.2 s through the renderer.

    .venv/bin/python -m bench.mastodon_split [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import regex

from bzi_broadcast.content import Announcement, parse_announcement
from bzi_broadcast.render import Renderer
from bzi_broadcast.render.thread import split_thread

TARGET_S = 0.2
WORD = "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen"
SENTENCE = (
    "Die Vision einer weltoffenen Kommune ist weder revolutionär noch weit von der Realität. "
)
SIZES = (10_000, 20_000, 40_000, 80_000)
_GRAPHEME = regex.compile(r"\X")


def word(size: int) -> str:
    return (WORD * (size // len(WORD) + 1))[:size]


def quote() -> str:
    return (SENTENCE * (2000 // len(SENTENCE) + 1))[:1999].rstrip() + "."


def announcement(blocks: list[dict[str, str]]) -> Announcement:
    data = {"title": "Benchmark", "hashtags": ["Integration"], "blocks": blocks}
    return parse_announcement(json.dumps(data), fmt="json")


def median_s(work: Callable[[], object], rounds: int) -> float:
    work()  # warm: templates compiled, regexes built
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def graphemes(text: str) -> Callable[[], object]:
    return lambda: len(_GRAPHEME.findall(text))


def splitting(text: str) -> Callable[[], object]:
    return lambda: split_thread(text)


def case(name: str, text: str, item: Announcement, rounds: int) -> float:
    renderer = Renderer()
    render = median_s(lambda: renderer.mastodon(item), rounds)
    alone = median_s(splitting(text), rounds)
    ref = median_s(graphemes(text), rounds)
    posts = len(renderer.mastodon(item).posts)
    print(f"  {name}: {len(text):,} characters, {posts} posts")
    print(f"    Renderer().mastodon: median {render * 1000:.1f} ms")
    print(f"    split_thread alone:  median {alone * 1000:.1f} ms")
    print(f"    reference (grapheme count of the same text): median {ref * 1000:.2f} ms")
    print(f"    ratio split_thread/reference: {alone / ref:.1f}×")
    return render


def growth(rounds: int) -> None:
    print("  growth, one word (split_thread alone; reference = grapheme count):")
    previous = None
    for size in SIZES:
        text = word(size)
        took, ref = median_s(splitting(text), rounds), median_s(graphemes(text), rounds)
        step = f", ×{took / previous:.2f} for ×2 the size" if previous else ""
        print(
            f"    {size:>6,} characters: {took * 1000:7.1f} ms{step}; "
            f"reference {ref * 1000:.2f} ms, ratio {took / ref:.1f}×"
        )
        previous = took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    print(
        f"bench/mastodon_split  machine: {platform.machine()} {platform.processor() or ''} "
        f"python {platform.python_version()}  rounds: {rounds} (median)"
    )
    big_word = word(80_000)
    took = case(
        "80,000-character word",
        big_word,
        announcement([{"type": "text", "text": big_word}]),
        rounds,
    )
    met = "met" if took <= TARGET_S else "MISSED"
    print(f"    target ≤ {TARGET_S * 1000:.0f} ms through the renderer: {met}")
    blocks = [{"type": "quote", "speaker": "Dr. Nergiz", "text": quote()} for _ in range(50)]
    case("2,000-character quote ×50", "\n\n".join([quote()] * 50), announcement(blocks), rounds)
    # The URL regex's worst case: backtracking from every position took 8 s for 2,000 characters.
    dots = "a." * 39_991 + "xyzzy/https://example.org"
    case(
        "80,000 characters of a.a.a… glued to a URL",
        dots,
        announcement([{"type": "text", "text": dots}]),
        rounds,
    )
    growth(rounds)


if __name__ == "__main__":
    main()
