"""What this process measures while it sends, and the Prometheus text format to show it in.

Figures that live in the database (deliveries by state, queue depth, scheduler lag, failed
logins) are counted at scrape time in ``web.operations``, so every replica reports the same
totals. What only the sending process sees is kept here, in memory: the send latency per channel
(a histogram) and the waits of the rate limiters. These are per process and start from zero at
each start, as Prometheus counters may.

The exposition follows the text format 0.0.4: ``# HELP`` and ``# TYPE`` once per family, label
values escaped, histogram buckets cumulative up to ``+Inf`` with ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Buckets:
    counts: list[int]
    total: float = 0.0
    count: int = 0


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = SEND_BUCKETS
    _series: dict[Labels, _Buckets] = field(default_factory=dict)

    def observe(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Buckets(counts=[0] * len(self.buckets))
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                series.counts[i] += 1
        series.total += seconds
        series.count += 1

    @contextmanager
    def time(self, **labels: str) -> Iterator[None]:
        """Observe how long the block took, whether it succeeded or raised."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started, **labels)

    def exposition(self) -> list[str]:
        lines = _head(self.name, self.help, "histogram")
        for key, series in sorted(self._series.items()):
            labels = dict(key)
            for bound, count in zip(self.buckets, series.counts, strict=True):
                lines.append(sample(f"{self.name}_bucket", count, {**labels, "le": _le(bound)}))
            lines.append(sample(f"{self.name}_bucket", series.count, {**labels, "le": "+Inf"}))
            lines.append(sample(f"{self.name}_sum", series.total, labels))
            lines.append(sample(f"{self.name}_count", series.count, labels))
        return lines


@dataclass
class Counter:
    name: str  # ends in _total, as the format asks of counters
    help: str
    _values: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] += amount

    def exposition(self) -> list[str]:
        return family(
            self.name, self.help, "counter", ((dict(k), v) for k, v in sorted(self._values.items()))
        )


SEND_SECONDS = Histogram(
    "bzi_send_seconds",
    "Time one channel send took (a mail, a whole Mastodon thread, one chat's Telegram "
    "messages), including waits for the channel's rate limits.",
)
RATE_LIMIT_WAITS = Counter(
    "bzi_rate_limit_waits_total", "Sends that had to wait for a rate limiter."
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "bzi_rate_limit_wait_seconds_total", "Seconds sends spent waiting for rate limiters."
)


def record_wait(limiter: str, seconds: float) -> None:
    """A send waited ``seconds`` for ``limiter`` ("smtp", "telegram")."""
    RATE_LIMIT_WAITS.inc(limiter=limiter)
    RATE_LIMIT_WAIT_SECONDS.inc(seconds, limiter=limiter)


def process_exposition() -> list[str]:
    return [
        *SEND_SECONDS.exposition(),
        *RATE_LIMIT_WAITS.exposition(),
        *RATE_LIMIT_WAIT_SECONDS.exposition(),
    ]


def family(
    name: str, help_text: str, kind: str, samples: Iterable[tuple[Mapping[str, str], float]]
) -> list[str]:
    """One metric family: its HELP and TYPE lines, then one line per labelled sample."""
    return [*_head(name, help_text, kind), *(sample(name, v, labels) for labels, v in samples)]


def sample(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in (labels or {}).items())
    return f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}"


def _head(name: str, help_text: str, kind: str) -> list[str]:
    help_line = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {help_line}", f"# TYPE {name} {kind}"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _le(bound: float) -> str:
    return repr(float(bound))
