"""Small inline SVG charts for staff pages, drawn on the server: they need no script, carry a
title and a description for screen readers, and every page shows the same figures as a table.

Series differ in colour and in dash pattern, so they stay apart in greyscale and for people who
do not tell the colours apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 40
STYLES = (("#0b6e99", ""), ("#b35900", "6 3"), ("#5b3f99", "2 3"), ("#1b6e3a", "8 3 2 3"))


@dataclass(frozen=True, kw_only=True)
class Series:
    name: str
    values: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class Chart:
    """What to draw: one label per point on the x axis, and the series over them."""

    ident: str  # unique on the page: the ids of <title> and <desc> derive from it
    title: str
    description: str
    labels: tuple[str, ...]
    series: tuple[Series, ...]
    bars: bool = False  # bars (one series) instead of lines


def svg(chart: Chart) -> Markup:
    top = nice_ceiling(max((max(s.values, default=0) for s in chart.series), default=0))
    parts = [
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" '
            'aria-labelledby="{i}-title {i}-desc" class="chart">'
            '<title id="{i}-title">{title}</title><desc id="{i}-desc">{desc}</desc>'
        ).format(w=WIDTH, h=HEIGHT, i=chart.ident, title=chart.title, desc=chart.description),
        _grid(top),
        _x_labels(chart.labels),
    ]
    for index, series in enumerate(chart.series):
        colour, dash = STYLES[index % len(STYLES)]
        draw = _bars if chart.bars else _line
        parts.append(draw(series.values, top, colour, dash))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def legend(chart: Chart) -> list[tuple[str, str, str]]:
    """(name, colour, dash) per series, for a legend written in HTML beside the chart."""
    return [
        (series.name, *STYLES[index % len(STYLES)]) for index, series in enumerate(chart.series)
    ]


def nice_ceiling(value: float) -> float:
    """The next of 1, 2, 5 × 10ⁿ at or above ``value`` (at least 1): round axis labels."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _x(index: int, count: int) -> float:
    inner = WIDTH - LEFT - RIGHT
    return LEFT + (inner * (index + 0.5) / count if count else 0)


def _y(value: float, top: float) -> float:
    inner = HEIGHT - TOP - BOTTOM
    return TOP + inner * (1 - value / top)


def _grid(top: float) -> Markup:
    lines = []
    for fraction in (0.0, 0.5, 1.0):
        y = _y(top * fraction, top)
        lines.append(
            Markup(
                '<line x1="{l}" x2="{r}" y1="{y:.1f}" y2="{y:.1f}" stroke="#d0d0cc"/>'
                '<text x="{tx}" y="{ty:.1f}" text-anchor="end" font-size="11" fill="#5a5a55">'
                "{label}</text>"
            ).format(
                l=LEFT, r=WIDTH - RIGHT, y=y, tx=LEFT - 6, ty=y + 4, label=_number(top * fraction)
            )
        )
    return Markup("").join(lines)


def _x_labels(labels: Sequence[str]) -> Markup:
    """The first, middle and last label: enough to read the time axis without crowding it.
    The outer ones are anchored at their outer end, so they stay inside the picture."""
    count = len(labels)
    shown = sorted({0, count // 2, count - 1}) if count else []
    return Markup("").join(
        Markup(
            '<text x="{x:.1f}" y="{y}" text-anchor="{anchor}" font-size="11" fill="#5a5a55">'
            "{label}</text>"
        ).format(
            x=_x(index, count),
            y=HEIGHT - BOTTOM + 16,
            anchor=_anchor(index, count),
            label=labels[index],
        )
        for index in shown
    )


def _anchor(index: int, count: int) -> str:
    if count < 3:
        return "middle"
    return "start" if index == 0 else "end" if index == count - 1 else "middle"


def _line(values: Sequence[float], top: float, colour: str, dash: str) -> Markup:
    """A line through the points, with a dot on each (a single point is a dot alone)."""
    points = [(_x(i, len(values)), _y(v, top)) for i, v in enumerate(values)]
    line = Markup(
        '<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" '
        'stroke-dasharray="{dash}"/>'
    ).format(
        points=" ".join(f"{x:.1f},{y:.1f}" for x, y in points),
        colour=colour,
        dash=dash or "none",
    )
    dots = Markup("").join(
        Markup('<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"/>').format(
            x=x, y=y, r=3 if len(points) <= 60 else 1.5, colour=colour
        )
        for x, y in points
    )
    return line + dots


def _bars(values: Sequence[float], top: float, colour: str, _dash: str) -> Markup:
    count = len(values)
    width = (WIDTH - LEFT - RIGHT) / max(count, 1) * 0.7
    base = _y(0, top)
    return Markup("").join(
        Markup(
            '<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}"/>'
        ).format(
            x=_x(i, count) - width / 2, y=_y(v, top), w=width, h=base - _y(v, top), colour=colour
        )
        for i, v in enumerate(values)
    )


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"
