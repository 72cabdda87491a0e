"""Charts as inline SVG: no scripts, fonts or styles from the network.

Each chart is drawn twice, for a wide window and for a phone-width one
(``class="wide"`` / ``class="narrow"``, one of them hidden by the page's CSS),
so its text stays readable at either width instead of being scaled down. The
points carry ``data-*`` attributes (trial, passed, chosen) so tests can check
what was drawn.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable, Sequence

PASS_COLOR = "#1f8a4c"
FAIL_COLOR = "#c8382e"
LIMIT_COLOR = "#c8382e"
INK = "#1d232b"
MUTED = "#5c6670"

# (class, width, height, font size) of the two drawings of a chart.
SIZES = (("wide", 720, 320, 13), ("narrow", 360, 300, 12))


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """About ``count`` round values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _span(values: Sequence[float], *, include: Sequence[float] = ()) -> tuple[float, float]:
    vals = [v for v in [*values, *include] if v is not None and math.isfinite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if hi == lo:  # one point sits mid-axis, not on it
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = 0.08 * (hi - lo)
    return lo - pad, hi + pad


def scatter_chart(points: Sequence[dict[str, Any]], *, x: str, y: str, x_label: str, y_label: str,
                  limit: float | None = None, limit_label: str = "", x_text: Callable[[float], str] | None = None,
                  y_text: Callable[[float], str] | None = None, point_label: Callable[[dict], str] | None = None,
                  title: str = "", include: Sequence[float] = (), y_max: float | None = None) -> str:
    """Points (dicts with keys ``x``/``y``, ``passed``, ``chosen``, and an
    optional ``tip``) on two axes; passed points are filled circles, failed
    ones crosses, the chosen one ringed and labelled. ``limit`` draws the gate
    as a dashed line; ``include`` are y values the axis must show (0 for a
    drop), ``y_max`` one it need not pass (1 for a cosine). Returns the wide
    and the narrow drawing."""
    x_text = x_text or (lambda v: f"{v:.3g}")
    y_text = y_text or (lambda v: f"{v:.3g}")
    drawn = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    x0, x1 = _span([float(p[x]) for p in drawn])
    y0, y1 = _span([float(p[y]) for p in drawn], include=[*include, *([limit] if limit is not None else [])])
    if y_max is not None and y1 > y_max > y0:
        y1 = y_max + 0.03 * (y_max - y0)
    return "".join(_scatter_svg(drawn, x, y, x_label, y_label, limit, limit_label, x_text, y_text, point_label,
                                title, (x0, x1, y0, y1), size) for size in SIZES)


def _scatter_svg(points, x, y, x_label, y_label, limit, limit_label, x_text, y_text, point_label, title, box,
                 size) -> str:
    cls, width, height, font = size
    x0, x1, y0, y1 = box
    left, right, top, bottom = 8 + 5.2 * font, 14, 14, 3.4 * font

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (width - left - right)

    def py(v: float) -> float:
        return height - bottom - (v - y0) / (y1 - y0) * (height - bottom - top)

    out = [f'<svg class="chart {cls}" role="img" aria-label="{esc(title)}" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" font-size="{font}" xmlns="http://www.w3.org/2000/svg">']
    for v in nice_ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{width - right}" y2="{py(v):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{py(v) + font / 3:.1f}" text-anchor="end" class="tick">{esc(y_text(v))}</text>')
    xt = nice_ticks(x0, x1, 3 if cls == "narrow" else 5)
    for v in xt:
        # Ticks near an end are anchored inside the chart, so their text is not cut off.
        anchor = "end" if px(v) > width - right - 3 * font else "start" if px(v) < left + 2 * font else "middle"
        out.append(f'<line x1="{px(v):.1f}" y1="{height - bottom}" x2="{px(v):.1f}" y2="{height - bottom + 4}" '
                   f'class="axis"/><text x="{px(v):.1f}" y="{height - bottom + font + 4:.1f}" text-anchor="{anchor}" '
                   f'class="tick">{esc(x_text(v))}</text>')
    out.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>'
               f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>'
               f'<text x="{(left + width - right) / 2:.1f}" y="{height - 6}" text-anchor="middle" class="lbl">'
               f'{esc(x_label)}</text>'
               f'<text x="{font}" y="{(top + height - bottom) / 2:.1f}" text-anchor="middle" class="lbl" '
               f'transform="rotate(-90 {font} {(top + height - bottom) / 2:.1f})">{esc(y_label)}</text>')
    if limit is not None:
        ly = py(limit)
        out.append(f'<line x1="{left}" y1="{ly:.1f}" x2="{width - right}" y2="{ly:.1f}" stroke="{LIMIT_COLOR}" '
                   f'stroke-dasharray="6 4" class="limit"/><text x="{width - right - 2}" y="{ly - 5:.1f}" '
                   f'text-anchor="end" class="tick" fill="{LIMIT_COLOR}">{esc(limit_label)}</text>')
    labels: dict[tuple[int, int], list[str]] = {}  # points drawn on the same spot share one label
    for p in points:
        text = point_label(p) if point_label else ""
        if text:
            labels.setdefault((round(px(float(p[x]))), round(py(float(p[y])))), []).append(text)
    for p in sorted(points, key=lambda p: bool(p.get("chosen"))):  # the chosen one on top
        cx, cy = px(float(p[x])), py(float(p[y]))
        color = PASS_COLOR if p.get("passed") else FAIL_COLOR
        tip = f"<title>{esc(p['tip'])}</title>" if p.get("tip") else ""
        attrs = (f'class="point" data-passed="{str(bool(p.get("passed"))).lower()}" '
                 f'data-chosen="{str(bool(p.get("chosen"))).lower()}"'
                 + (f' data-trial="{esc(p["trial"])}"' if p.get("trial") is not None else ""))
        if p.get("passed"):
            mark = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5.5" fill="{color}"/>'
        else:
            mark = (f'<path d="M{cx - 5:.1f} {cy - 5:.1f}L{cx + 5:.1f} {cy + 5:.1f}M{cx - 5:.1f} {cy + 5:.1f}'
                    f'L{cx + 5:.1f} {cy - 5:.1f}" stroke="{color}" stroke-width="2.5"/>')
        ring = (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="10" fill="none" stroke="{INK}" stroke-width="2" class="ring"/>'
                if p.get("chosen") else "")
        label = ", ".join(labels.pop((round(cx), round(cy)), []))
        anchor = "end" if cx > width * 0.75 else "start"
        dx = -13 if anchor == "end" else 13
        text = (f'<text x="{cx + dx:.1f}" y="{cy - 8:.1f}" text-anchor="{anchor}" class="plabel">{esc(label)}</text>'
                if label else "")
        out.append(f"<g {attrs}>{tip}{ring}{mark}{text}</g>")
    out.append("</svg>")
    return "".join(out)


def legend(items: Sequence[tuple[str, str]]) -> str:
    """A row of (swatch kind, text): kinds ``pass``, ``fail``, ``chosen``, ``limit``."""
    swatches = {
        "pass": f'<circle cx="8" cy="8" r="5.5" fill="{PASS_COLOR}"/>',
        "fail": f'<path d="M3 3L13 13M3 13L13 3" stroke="{FAIL_COLOR}" stroke-width="2.5"/>',
        "chosen": f'<circle cx="8" cy="8" r="6.5" fill="none" stroke="{INK}" stroke-width="2"/>',
        "limit": f'<line x1="0" y1="8" x2="16" y2="8" stroke="{LIMIT_COLOR}" stroke-dasharray="5 3" stroke-width="2"/>',
    }
    return '<div class="legend">' + "".join(
        f'<span><svg width="16" height="16" viewBox="0 0 16 16" aria-hidden="true">{swatches[kind]}</svg>{esc(text)}</span>'
        for kind, text in items) + "</div>"


def meter(fraction: float | None, *, tone: str = "") -> str:
    """A small inline bar for a fraction in [0, 1] (table cells)."""
    if fraction is None or not math.isfinite(fraction):
        return ""
    width = max(0.0, min(1.0, fraction)) * 100
    return f'<span class="meter {tone}"><span style="width:{width:.1f}%"></span></span>'
