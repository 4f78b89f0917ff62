"""Charts drawn on the server as SVG for the console's overviews: a line chart of time series
and a bar chart of totals.  Plain markup, no JavaScript; every series is a ``<g>`` with its
name in ``data-series`` and a ``<title>``, so a reader (or a test) can tell which is which."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 26
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")  # fmt: skip


@dataclass(frozen=True)
class Line:
    name: str
    points: list[tuple[float, float]]  # (unix time, value)


@dataclass(frozen=True)
class LegendEntry:
    name: str
    color: str
    latest: float


@dataclass(frozen=True)
class Chart:
    svg: SafeString
    legend: list[LegendEntry]

    @property
    def empty(self) -> bool:
        return not self.legend


def _top(value: float) -> float:
    """A round number at or above ``value`` for the y axis (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def line_chart(lines: list[Line], *, start: float, end: float, label: str) -> Chart:
    """``lines`` over [start, end] (unix times); ``label`` names the chart for screen readers."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for line in lines for _, v in line.points if math.isfinite(v)]
    top = _top(max(values, default=0.0))
    span = max(end - start, 1.0)

    def xy(t: float, v: float) -> str:
        return f"{LEFT + (t - start) / span * plot_w:.1f},{TOP + plot_h - min(v, top) / top * plot_h:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sluice-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" aria-label="{escape(label)}">']  # fmt: skip
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h - fraction * plot_h
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
                     f"{number(top * fraction)}</text>")  # fmt: skip
    minutes = round(span / 60)
    for fraction, text in ((0.0, f"-{minutes} min"), (0.5, f"-{minutes // 2} min"), (1.0, "now")):
        anchor = "start" if fraction == 0 else "end" if fraction == 1 else "middle"
        parts.append(f'<text x="{LEFT + fraction * plot_w:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}" '
                     f'font-size="11">{text}</text>')  # fmt: skip
    legend = []
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        points = [(t, v) for t, v in line.points if math.isfinite(v)]
        if not points:
            continue
        legend.append(LegendEntry(line.name, color, points[-1][1]))
        parts.append(f'<g class="series" data-series="{escape(line.name)}"><title>{escape(line.name)}</title>')
        if len(points) == 1:
            cx, cy = xy(*points[0]).split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="{color}"/>')
        else:
            path = " ".join(xy(t, v) for t, v in points)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return Chart(svg=mark_safe("".join(parts)), legend=legend)  # noqa: S308 (every text above is escaped)


def bar_chart(bars: list[tuple[str, float]], *, label: str) -> Chart:
    """Horizontal bars, largest first; ``label`` names the chart for screen readers."""
    bars = sorted(bars, key=lambda bar: (-bar[1], bar[0]))
    row = 24
    height = max(row * len(bars), row) + 8
    name_w, plot_w = 200, WIDTH - 200 - 70
    top = max((value for _, value in bars), default=0.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sluice-chart" role="img" viewBox="0 0 {WIDTH} {height}" '
             f'width="{WIDTH}" height="{height}" aria-label="{escape(label)}">']  # fmt: skip
    legend = []
    for index, (name, value) in enumerate(bars):
        color = PALETTE[index % len(PALETTE)]
        legend.append(LegendEntry(name, color, value))
        y = 4 + index * row
        parts.append(f'<g class="series" data-series="{escape(name)}"><title>{escape(name)}: {number(value)}</title>'
                     f'<text x="{name_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{escape(name)}</text>'
                     f'<rect x="{name_w}" y="{y + 3}" width="{max(value / top * plot_w, 1):.1f}" height="{row - 8}" '
                     f'fill="{color}"/><text x="{name_w + max(value / top * plot_w, 1) + 6:.1f}" y="{y + 15}" '
                     f'font-size="12">{number(value)}</text></g>')  # fmt: skip
    parts.append("</svg>")
    return Chart(svg=mark_safe("".join(parts)), legend=legend)  # noqa: S308 (every text above is escaped)
