"""A self-contained HTML report of a shrink run, with charts drawn as inline SVG.

No scripts, fonts or styles from the network: the file opens anywhere. The
charts are simple on purpose: a size waterfall per stage, per-layer sparsity,
per-layer quantization error, and the accuracy/size trade-off of the search.
The same numbers go to the JSON report; this module only draws them.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable, Sequence

WIDTH = 760
BAR_COLOR = "#3b7dd8"
PASS_COLOR = "#2e9d57"
FAIL_COLOR = "#d0473d"
MUTED = "#8a8f98"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def bar_chart(title: str, rows: Sequence[tuple[str, float, str]], *, unit: str = "", max_value: float | None = None,
              value_text=None) -> str:
    """Horizontal bars: (label, value, colour). ``value_text`` formats the number."""
    if not rows:
        return f'<section><h2>{_esc(title)}</h2><p class="muted">nothing to show</p></section>'
    value_text = value_text or (lambda v: f"{v:.3g}{unit}")
    top = max_value if max_value is not None else max((v for _, v, _ in rows), default=1.0) or 1.0
    label_w, bar_w, row_h = 230, WIDTH - 230 - 110, 22
    height = row_h * len(rows) + 10
    parts = [f'<svg role="img" aria-label="{_esc(title)}" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value, color) in enumerate(rows):
        y = 5 + i * row_h
        w = 0 if not math.isfinite(value) or top <= 0 else max(0.0, min(1.0, value / top)) * bar_w
        short = label if len(label) <= 34 else label[:15] + "…" + label[-16:]
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" class="lbl">{_esc(short)}'
                     f'<title>{_esc(label)}</title></text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{color}" rx="2"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" class="val">{_esc(value_text(value))}</text>')
    parts.append("</svg>")
    return f"<section><h2>{_esc(title)}</h2>{''.join(parts)}</section>"


def scatter_chart(title: str, points: Sequence[dict[str, Any]], *, x: str, y: str, x_label: str, y_label: str,
                  limit: float | None = None, x_text: Callable[[float], str] | None = None) -> str:
    """Points with keys ``x``/``y``, ``passed`` and ``chosen`` (ringed); an optional
    horizontal limit line at ``limit``; ``x_text`` formats the x ticks."""
    x_text = x_text or (lambda v: f"{v:.3g}")
    if not points:
        return f'<section><h2>{_esc(title)}</h2><p class="muted">no search was run</p></section>'
    height, left, bottom, pad = 300, 60, 40, 16
    xs = [float(p[x]) for p in points]
    ys = [float(p[y]) for p in points] + ([limit] if limit is not None else [])
    x0, x1 = min(xs), max(xs)
    margin = 0.1 * (x1 - x0) if x1 > x0 else 0.1 * abs(x0) or 1.0  # one point sits mid-axis, not on it
    x0, x1 = x0 - margin, x1 + margin
    y0, y1 = min(ys + [0.0]), max(ys)
    y1 = y1 if y1 > y0 else y0 + 1

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (WIDTH - left - pad)

    def py(v: float) -> float:
        return height - bottom - (v - y0) / (y1 - y0) * (height - bottom - pad)

    parts = [f'<svg role="img" aria-label="{_esc(title)}" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{WIDTH - pad}" y2="{height - bottom}" class="axis"/>',
             f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - bottom}" class="axis"/>',
             f'<text x="{(left + WIDTH) / 2}" y="{height - 8}" text-anchor="middle" class="lbl">{_esc(x_label)}</text>',
             f'<text x="14" y="{(height - bottom) / 2}" text-anchor="middle" class="lbl" '
             f'transform="rotate(-90 14 {(height - bottom) / 2})">{_esc(y_label)}</text>']
    for v, anchor in ((x0, "start"), ((x0 + x1) / 2, "middle"), (x1, "end")):  # the ends stay inside the chart
        parts.append(f'<text x="{px(v):.1f}" y="{height - bottom + 14}" text-anchor="{anchor}" class="val">'
                     f'{_esc(x_text(v))}</text>')
    for v in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end" class="val">{v:.3g}</text>')
    if limit is not None:
        parts.append(f'<line x1="{left}" y1="{py(limit):.1f}" x2="{WIDTH - pad}" y2="{py(limit):.1f}" '
                     f'stroke="{FAIL_COLOR}" stroke-dasharray="5 4"/>')
        parts.append(f'<text x="{WIDTH - pad}" y="{py(limit) - 4:.1f}" text-anchor="end" class="val">limit {limit:g}</text>')
    for p in points:
        color = PASS_COLOR if p.get("passed") else FAIL_COLOR
        tip = ", ".join(f"{k}={v}" for k, v in p.items() if not isinstance(v, (list, dict)))
        cx, cy = px(float(p[x])), py(float(p[y]))
        if p.get("chosen"):
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}"><title>{_esc(tip)}</title></circle>')
    parts.append("</svg>")
    return f"<section><h2>{_esc(title)}</h2>{''.join(parts)}</section>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:820px;color:#1d232b}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.muted{color:#8a8f98} .pass{color:#2e9d57;font-weight:600} .fail{color:#d0473d;font-weight:600}
.lbl{font-size:12px;fill:#1d232b} .val{font-size:11px;fill:#56606c} .axis{stroke:#9aa3ad}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 10px;border-bottom:1px solid #e3e6ea;text-align:left}
.kpis{display:flex;gap:28px;margin:14px 0} .kpi b{display:block;font-size:20px}
"""


def latency_section(report: dict[str, Any]) -> str:
    """The output's latency against the original's (the report's ``latency``
    object), with the one-line flag when it is slower beyond the noise; empty
    when latency was not measured. A section of its own, so any layout of the
    page can place it."""
    latency = report.get("latency")
    if not latency:
        return ""
    threads = latency.get("threads", 1)
    verdict = ('<p class="fail">slower than the original beyond the noise</p>' if latency.get("slower") else "")
    bound = report.get("max_latency_ratio")
    rows = [("original", f"{latency['reference_ms']:.3f} ms"), ("output", f"{latency['candidate_ms']:.3f} ms"),
            ("ratio", f"{latency['ratio']:.2f}× (noise ±{latency['noise']:.2f})")]
    if bound is not None:
        rows.append(("bound (--max-latency-ratio)", f"{bound:g}×"))
    rows.append(("measured", f"{threads} thread{'s' if threads != 1 else ''}, batch {latency.get('batch', 1)}, "
                             f"{latency.get('form', '')}, median of {latency.get('rounds')} interleaved rounds of "
                             f"{latency.get('runs')} runs"))
    return f"<section><h2>Latency</h2>{verdict}{_table(['', 'value'], rows)}</section>"


def render_html(report: dict[str, Any]) -> str:
    """The HTML page for a shrink report (the dict that also goes to JSON)."""
    stages = report.get("stages", [])
    layers = report.get("layers", [])
    search = report.get("search", [])
    final = report.get("final") or {}
    passed = report.get("passed")
    verdict = '<span class="pass">gate passed</span>' if passed else '<span class="fail">gate FAILED</span>'
    original = stages[0]["bytes"] if stages else 0
    out_bytes = report.get("output_bytes") or (stages[-1]["bytes"] if stages else 0)
    kpis = [("size", f"{_fmt_bytes(original)} → {_fmt_bytes(out_bytes)}"),
            ("ratio", f"{report.get('ratio', 0):.1f}×")]
    acc = final.get("accuracy")
    if acc:
        kpis.append(("accuracy", f"{100 * acc['reference']:.2f}% → {100 * acc['candidate']:.2f}%"))
        if acc.get("labelled"):
            kpis.append(("eval samples changed", f"{acc['lost']} newly wrong, {acc['gained']} newly right "
                                                 f"of {acc['labelled']}"))
    cos = [m.get("cosine") for m in (final.get("outputs") or {}).values() if m.get("cosine") is not None]
    if cos:
        kpis.append(("min output cosine", f"{min(cos):.5f}"))
    if report.get("latency"):
        kpis.append(("latency", f"{report['latency']['ratio']:.2f}× the original"))
    kpi_html = "".join(f'<div class="kpi"><span class="muted">{_esc(k)}</span><b>{_esc(v)}</b></div>' for k, v in kpis)

    waterfall = bar_chart(
        "Size after each stage",
        [(s["name"], float(s.get("packed_bytes") or s["bytes"]), PASS_COLOR if i == len(stages) - 1 else BAR_COLOR)
         for i, s in enumerate(stages)],
        value_text=_fmt_bytes,
    )
    sparsity = bar_chart("Sparsity per layer", [(l["name"], 100.0 * float(l.get("sparsity") or 0.0), BAR_COLOR)
                                                for l in layers], unit="%", max_value=100.0,
                         value_text=lambda v: f"{v:.1f}%")
    qrows = [(l["name"], float(l["quant_error"]), MUTED if l.get("kept_float") else BAR_COLOR)
             for l in layers if l.get("quant_error") is not None]
    qerror = bar_chart("Quantization error per layer (relative weight error, grey = kept in float)", qrows,
                       value_text=lambda v: f"{100 * v:.2f}%")
    tradeoff = scatter_chart("Search: accuracy drop vs size", search, x="size_bytes", y="accuracy_drop",
                             x_label="packed size (ringed: the one kept)", y_label="accuracy drop (points)",
                             limit=report.get("gate", {}).get("max_accuracy_drop"), x_text=_fmt_bytes)
    stage_rows = [(s["name"], _fmt_bytes(s["bytes"]), _fmt_bytes(s["packed_bytes"]) if s.get("packed_bytes") else "-",
                   s.get("note", "")) for s in stages]
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>onnxshrink report: {_esc(report.get('model', ''))}</title><style>{STYLE}</style></head><body>"
        f"<h1>onnxshrink: {_esc(report.get('model', ''))}</h1>"
        f"<div class=\"muted\">→ {_esc(report.get('output', ''))} · {verdict}</div>"
        f"<div class=\"kpis\">{kpi_html}</div>"
        f"{latency_section(report)}{waterfall}{sparsity}{qerror}{tradeoff}"
        f"<section><h2>Stages</h2>{_table(['stage', 'onnx bytes', 'packed bytes', 'note'], stage_rows)}</section>"
        "</body></html>\n"
    )
