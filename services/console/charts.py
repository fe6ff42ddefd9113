"""Geometry of the console's charts, drawn as server-rendered SVG by the templates.

Pure: numbers in, coordinates out. The templates turn them into <svg> with
presentation attributes only (no inline style: the console's CSP forbids it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    x: float
    y: float
    width: float
    height: float
    negative: bool
    text_x: float  # where the value is printed
    anchor: str  # "start" or "end"


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    zero_x: float
    label_width: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (x, label)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def bar_chart(items: list[tuple[str, float]], width: int = 720, row: int = 28, label_width: int = 190) -> BarChart:
    """Horizontal bars around a zero line, one per (label, value)."""
    values = [v for _, v in items] or [0.0]
    ticks = _nice_ticks(min(0.0, *values), max(0.0, *values))
    lo, hi = ticks[0], ticks[-1]
    plot_left, plot_right = label_width + 10, width - 70
    scale = (plot_right - plot_left) / ((hi - lo) or 1.0)
    zero_x = plot_left + (0.0 - lo) * scale
    bars = []
    for i, (label, value) in enumerate(items):
        x_end = plot_left + (value - lo) * scale
        x, w = (min(zero_x, x_end), abs(x_end - zero_x))
        y = 10 + i * row
        negative = value < 0
        text_x = (x - 4) if negative else (x + w + 4)
        bars.append(
            Bar(
                label,
                value,
                x,
                y,
                max(w, 1.0 if value else 0.0),
                row - 8,
                negative,
                text_x,
                "end" if negative else "start",
            )
        )
    height = 10 + len(items) * row + 26
    return BarChart(width, height, zero_x, label_width, bars, [(plot_left + (t - lo) * scale, _fmt(t)) for t in ticks])


@dataclass(frozen=True)
class LineChart:
    width: int
    height: int
    left: int
    top: int
    bottom: int
    right: int
    points: list[tuple[float, float, str, str]]  # (x, y, alpha text, value text)
    polyline: str
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    chosen: tuple[float, float] | None


def cv_chart(
    points: list[tuple[float, float]], chosen_alpha: float | None, width: int = 1000, height: int = 300
) -> LineChart:
    """Mean validation error against alpha on a log scale; the chosen alpha marked."""
    left, right, top, bottom = 80, width - 20, 16, height - 44
    pts = sorted(p for p in points if p[0] > 0)
    if not pts:
        return LineChart(width, height, left, top, bottom, right, [], "", [], [], None)
    lx = [math.log10(a) for a, _ in pts]
    x_lo, x_hi = min(lx), max(lx)
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    y_ticks = _nice_ticks(min(v for _, v in pts), max(v for _, v in pts), 4)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def sx(alpha: float) -> float:
        return left + (math.log10(alpha) - x_lo) / (x_hi - x_lo) * (right - left)

    def sy(value: float) -> float:
        return bottom - (value - y_lo) / ((y_hi - y_lo) or 1.0) * (bottom - top)

    marks = [(sx(a), sy(v), f"{a:g}", _fmt(v)) for a, v in pts]
    chosen = None
    if chosen_alpha is not None:
        hit = [(sx(a), sy(v)) for a, v in pts if math.isclose(a, chosen_alpha, rel_tol=1e-9)]
        chosen = hit[0] if hit else None
    x_ticks = [(sx(a), f"{a:g}") for a, _ in pts]
    return LineChart(
        width,
        height,
        left,
        top,
        bottom,
        right,
        marks,
        " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in marks),
        x_ticks,
        [(sy(t), _fmt(t)) for t in y_ticks],
        chosen,
    )


@dataclass(frozen=True)
class Span:
    org: str
    step: str
    x: float
    y: float
    width: float
    seconds: float
    colour: int  # index into the stylesheet's step colours


@dataclass(frozen=True)
class Waterfall:
    width: int
    height: int
    left: int
    rows: list[tuple[str, float]]  # (org, y of its row)
    spans: list[Span]
    ticks: list[tuple[float, str]]
    total_s: float


def waterfall(
    rows: list[tuple[str, str, float, float]], steps: list[str], orgs: list[str], width: int = 1000, row: int = 34
) -> Waterfall:
    """One lane per organisation; each step a bar from its start to its end (seconds)."""
    left, right = 110, width - 20
    total = max((end for _, _, _, end in rows), default=0.0) or 1.0
    ticks = _nice_ticks(0.0, total, 6)
    scale = (right - left) / (ticks[-1] or 1.0)
    lanes = {org: 8 + i * row for i, org in enumerate(orgs)}
    spans = [
        Span(
            org,
            step,
            left + start * scale,
            lanes[org] + 4,
            max(2.0, (end - start) * scale),
            end - start,
            steps.index(step) if step in steps else 0,
        )
        for org, step, start, end in rows
        if org in lanes
    ]
    height = 8 + len(orgs) * row + 30
    return Waterfall(
        width,
        height,
        left,
        [(org, y) for org, y in lanes.items()],
        spans,
        [(left + t * scale, f"{t:g} s") for t in ticks],
        total,
    )
