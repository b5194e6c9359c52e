"""Inline SVG charts for the console: values with intervals, one row each (no plotting library at request time).

    interval_chart([Row("champion v3", 0.49, 0.47, 0.51), ...], title="nDCG@10")

A row is a labelled value with an optional [low, high] interval, drawn as a dot and a whisker on one
shared axis; `reference` draws a dashed vertical line (0 for a difference, a threshold). Every
number is escaped into attributes; the SVG needs no script and no external resource.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

COLOURS = {"champion": "#2b6cb0", "challenger": "#c05621", "difference": "#2f855a", "": "#4a5568"}


@dataclass(frozen=True)
class Row:
    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    kind: str = ""  # champion | challenger | difference: the colour


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, int | float) and math.isfinite(x) for x in xs)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Two-sided Wilson score interval of a rate (z = 1.96: 95 %); None when n = 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n)), min(1.0, (centre + margin) / (1 + z * z / n))


def interval_chart(rows: list[Row], title: str, reference: float | None = None, width: int = 560) -> str:
    """An SVG of one row per value (dot, whisker for its interval); '' when no row has a finite value."""
    rows = [r for r in rows if _finite(r.value)]
    if not rows:
        return ""
    xs = [r.value for r in rows] + [v for r in rows for v in (r.low, r.high) if _finite(v)]
    if reference is not None:
        xs.append(reference)
    lo, hi = min(xs), max(xs)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 0.1
    lo, hi = lo - pad, hi + pad
    label_w, row_h, top = 190, 22, 30
    plot_w = width - label_w - 20
    height = top + row_h * len(rows) + 26

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if reference is not None:
        rx = x(reference)
        parts.append(
            f'<line x1="{rx:.1f}" y1="{top - 6}" x2="{rx:.1f}" y2="{height - 22}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for i, r in enumerate(rows):
        y = top + i * row_h + row_h / 2
        colour = COLOURS.get(r.kind, COLOURS[""])
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 4:.1f}" font-size="12" text-anchor="end">{escape(r.label)}</text>'
        )
        if _finite(r.low, r.high):
            parts.append(
                f'<line x1="{x(r.low):.1f}" y1="{y:.1f}" x2="{x(r.high):.1f}" y2="{y:.1f}" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
        interval = f" [{r.low:.4f}, {r.high:.4f}]" if _finite(r.low, r.high) else ""
        parts.append(
            f'<circle cx="{x(r.value):.1f}" cy="{y:.1f}" r="4.5" fill="{colour}">'
            f"<title>{escape(r.label)}: {r.value:.4f}{interval}</title></circle>"
        )
    axis_y = height - 16
    for v in (lo + pad, (lo + hi) / 2, hi - pad):
        parts.append(f'<text x="{x(v):.1f}" y="{axis_y + 10}" font-size="10" text-anchor="middle">{v:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)
