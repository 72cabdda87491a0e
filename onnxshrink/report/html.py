"""The shrink report as one self-contained HTML page (inline CSS and SVG, no
scripts, nothing from the network), readable from a 1280 px window down to a
phone's 390.

It draws what the JSON report holds (the same dict): the headline metrics
with honest labels, every trial of the search (size against the gate's
metric, passed or failed, the one kept ringed), what pruning measured inside
the kept trial, the per-layer choices under the input model's names, the
stages, and latency. Nothing is measured here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from onnxshrink.report.charts import esc, legend, meter, scatter_chart
from onnxshrink.report.metrics import (
    SAMPLE_COSINE,
    WHOLE_COSINE,
    gate_text,
    latency_label,
    latency_of,
    latency_text,
    latency_verdict,
    metric_rows,
)
from onnxshrink.report.style import STYLE
from onnxshrink.units import binary_bytes


def _table(headers: Sequence[tuple[str, str]], rows: Sequence[Sequence[tuple[str, str]]], *, cls: str = "cards") -> str:
    """A table from (header, class) pairs and rows of (html, class) cells; each
    cell carries its header as ``data-label`` for the phone layout."""
    head = "".join(f'<th class="{c}">{esc(h)}</th>' for h, c in headers)
    body = "".join("<tr>" + "".join(f'<td class="{c}" data-label="{esc(h)}"><span>{cell}</span></td>'
                                    for (h, _), (cell, c) in zip(headers, row)) + "</tr>" for row in rows)
    return f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _gate_axis(report: Mapping[str, Any]) -> tuple[str, str, float | None, str]:
    """(row key, axis label, limit, limit label) of the gate's metric."""
    gate = report.get("gate") or {}
    if gate.get("max_accuracy_drop") is not None:
        limit = gate["max_accuracy_drop"]
        return "accuracy_drop_points", "accuracy drop (points)", limit, f"gate: at most {limit:g}"
    limit = gate.get("min_cosine")
    return "cosine", WHOLE_COSINE, limit, (f"gate: at least {limit:g}" if limit is not None else "")


def _trial_value(row: Mapping[str, Any], key: str, report: Mapping[str, Any]) -> float | None:
    if row.get(key) is not None:
        return row[key]
    if row.get("size_bytes") is None or row.get("failed"):
        return None
    gate = report.get("gate") or {}
    if key == "accuracy_drop_points" and gate.get("max_accuracy_drop") is not None:
        return row.get("accuracy_drop")
    if key == "cosine" and gate.get("min_cosine") is not None and row.get("accuracy_drop") is not None:
        return 1.0 - row["accuracy_drop"]  # older rows: the budget used, 1 - cosine
    return None


def _share_text(share: Any) -> str:
    if share is None:
        return "as the recipe says"
    return "none" if share == 0 else f"{100 * share:.0f}% of the budget"


def trials_section(report: Mapping[str, Any]) -> str:
    rows = report.get("search") or []
    key, y_label, limit, limit_label = _gate_axis(report)
    searched = report.get("searched", bool(rows))
    points, table = [], []
    fmt = (lambda v: f"{v:.2f}") if key == "accuracy_drop_points" else (lambda v: f"{v:.4f}")
    for row in rows:
        y = _trial_value(row, key, report)
        size = row.get("size_bytes") if not row.get("failed") else None
        verdict = "passed" if row.get("passed") else "failed"
        tip = (f"trial {row.get('trial')}: pruning given {_share_text(row.get('prune_budget_share'))}; "
               + (f"{binary_bytes(size)} ({row.get('ratio', 0):.1f}x smaller); " if size else "")
               + (f"{y_label} {fmt(y)}; " if y is not None else "") + verdict + ("; kept" if row.get("chosen") else ""))
        if size and y is not None:
            points.append({"x": size, "y": y, "passed": row.get("passed"), "chosen": row.get("chosen"),
                           "trial": row.get("trial"), "tip": tip})
        note = "kept" if row.get("chosen") else (row.get("failed") or ("" if row.get("passed") else "did not pass"))
        if row.get("reused"):
            note += ("; " if note else "") + "same weights as an earlier trial"
        table.append([
            (esc(row.get("trial")), "num"), (esc(_share_text(row.get("prune_budget_share"))), ""),
            (esc(binary_bytes(size)) if size else "-", "num"),
            (f"{row['ratio']:.1f}x" if size and row.get("ratio") else "-", "num"),
            (esc(fmt(y)) if y is not None else "-", "num"),
            (f"{row['min_sample_cosine']:.4f}" if row.get("min_sample_cosine") is not None else "-", "num"),
            (f'<span class="{"pass" if row.get("passed") else "fail"}">{verdict}</span>', ""),
            (esc(note), ""),
        ])
    if not rows:
        return ""
    acc = (report.get("final") or {}).get("accuracy") or {}
    on = f" on {acc['labelled']} labelled samples" if key == "accuracy_drop_points" and acc.get("labelled") else ""
    intro = (f"{len(rows)} trial{'s' if len(rows) != 1 else ''}: pruning given a share of the gate's budget, "
             f"quantization the rest, each packed and checked against the original{on}. The ringed one is kept."
             if searched else "The recipe fixed what to do: one trial, no search.")
    kept = next((r for r in rows if r.get("chosen")), None)
    if kept and kept.get("size_bytes") and report.get("float16_tensors") \
            and report.get("output_bytes") != kept["size_bytes"]:
        intro += (f" Some of its float tensors were then stored as float16 and the gate checked again: the output is "
                  f"{binary_bytes(report['output_bytes'])}.")
    chart = scatter_chart(points, x="x", y="y", x_label="packed size", y_label=y_label, limit=limit,
                          limit_label=limit_label, x_text=binary_bytes, y_text=fmt,
                          include=[0.0] if key == "accuracy_drop_points" else [],
                          y_max=1.0 if key == "cosine" else None,
                          point_label=lambda p: f"#{p['trial']}" + (" kept" if p.get("chosen") else ""),
                          title="every trial of the search: packed size against the gate's metric")
    headers = [("trial", "num"), ("pruning", ""), ("packed size", "num"), ("smaller by", "num"), (y_label, "num"),
               (SAMPLE_COSINE, "num"), ("gate", ""), ("note", "")]
    keys = [("pass", "passed the gate"), ("fail", "failed"), ("chosen", "kept")] + \
        ([("limit", limit_label)] if limit is not None else [])
    drawn = f'<div class="chartbox">{chart}</div>{legend(keys)}' if searched or len(points) > 1 else ""
    return (f'<section id="trials"><h2>Search: every trial</h2><p class="muted">{esc(intro)}</p>'
            f'{drawn}{_table(headers, table)}</section>')


def prune_steps_section(report: Mapping[str, Any]) -> str:
    """What pruning measured inside the kept trial: each allocation's sparsity
    against the gate's metric, before quantization."""
    steps = [s for s in report.get("prune_search") or [] if s.get("sparsity") is not None and not s.get("skipped")]
    if len(steps) < 2:
        return ""
    gate = report.get("gate") or {}
    key = "accuracy_drop" if gate.get("max_accuracy_drop") is not None and any("accuracy_drop" in s for s in steps) \
        else "cosine"
    label = "accuracy drop (points)" if key == "accuracy_drop" else WHOLE_COSINE
    best = max((s for s in steps if s.get("passed")), key=lambda s: s["sparsity"], default=None)
    kept = next((row for row in report.get("search") or [] if row.get("chosen")), {})
    share = kept.get("prune_budget_share")
    limit = None
    if share is not None and key == "accuracy_drop":
        limit = share * gate["max_accuracy_drop"]
    elif share is not None and gate.get("min_cosine") is not None:
        limit = 1.0 - share * (1.0 - gate["min_cosine"])
    points = [{"x": 100 * s["sparsity"], "y": s.get(key), "passed": s.get("passed"), "chosen": s is best,
               "tip": f"{100 * s['sparsity']:.1f}% of weights zero: {label} {s.get(key, 0):.4g}"
                      + ("" if s.get("passed") else " (over pruning's share)")} for s in steps if s.get(key) is not None]
    fmt = (lambda v: f"{v:.2f}") if key == "accuracy_drop" else (lambda v: f"{v:.4f}")
    chart = scatter_chart(points, x="x", y="y", x_label="weights pruned (%)", y_label=label,
                          x_text=lambda v: f"{v:.0f}%", y_text=fmt, limit=limit,
                          limit_label=f"pruning's share: {limit:.3g}" if limit is not None else "",
                          include=[0.0] if key == "accuracy_drop" else [], y_max=1.0 if key == "cosine" else None,
                          point_label=lambda p: "kept" if p.get("chosen") else "",
                          title="pruning search inside the kept trial")
    keys = [("pass", "within pruning share"), ("fail", "over it"), ("chosen", "kept")]
    keys += [("limit", "pruning share of the budget")] if limit is not None else []
    return ('<section id="prune-steps"><h2>Pruning inside the kept trial</h2><p class="muted">Each allocation of '
            "per-layer sparsity pruning measured on the float model, before quantization, against its share of the "
            "budget: what pruning more (to the right) or less would cost.</p>"
            f'<div class="chartbox">{chart}</div>'
            f"{legend(keys)}</section>")


def layers_section(report: Mapping[str, Any]) -> str:
    layers = report.get("layers") or []
    if not layers:
        return ""
    rows = []
    for layer in layers:
        nodes = layer.get("nodes") or ""
        name = f'<div class="name">{esc(layer["name"])}</div>'
        if nodes and nodes != layer["name"]:
            name += f'<div class="nodes">read by <span class="name">{esc(nodes)}</span></div>'
        if layer.get("origin"):
            name += f'<div class="origin">{esc(layer["origin"])}</div>'
        sparsity = layer.get("sparsity") or 0.0
        error = layer.get("quant_error")
        precision = esc(layer.get("precision") or "-")
        if layer.get("kept_float"):
            stored = "" if layer.get("precision") == "float" else f" ({precision})"
            precision = f'<span class="keptfloat">kept in float{stored}</span>'
        rows.append([(name, "name-cell"), (esc(layer.get("op", "")), ""),
                     (f"{layer['params']:,}" if layer.get("params") is not None else "-", "num"),
                     (f"{100 * sparsity:.1f}%{meter(sparsity)}", "num"), (precision, ""),
                     (f"{100 * error:.2f}%" if error is not None else "-", "num")])
    headers = [("layer (weight, node, origin)", ""), ("op", ""), ("weights", "num"), ("pruned", "num"),
               ("stored as", ""), ("weight error", "num")]
    kept = sum(1 for layer in layers if layer.get("kept_float"))
    note = (f"{len(layers)} layers under the input model's names; {kept} kept in float. "
            "Weight error is ||W − Ŵ|| / ||W|| of the quantized weight.")
    return f'<section id="layers"><h2>Per layer</h2><p class="muted">{esc(note)}</p>{_table(headers, rows)}</section>'


def stages_section(report: Mapping[str, Any]) -> str:
    stages = report.get("stages") or []
    if not stages:
        return ""
    top = max((s.get("packed_bytes") or s.get("bytes") or 0 for s in stages), default=1) or 1
    rows = []
    for s in stages:
        shown = s.get("packed_bytes") or s.get("bytes") or 0
        rows.append([(esc(s["name"]), ""), (esc(binary_bytes(s.get("bytes"))), "num"),
                     (esc(binary_bytes(s.get("packed_bytes"))) + meter(shown / top), "num"), (esc(s.get("note", "")), "")])
    headers = [("stage", ""), ("ONNX size", "num"), ("packed size", "num"), ("note", "")]
    return f'<section id="stages"><h2>Stages</h2>{_table(headers, rows)}</section>'


def _kpis(report: Mapping[str, Any]) -> str:
    final = report.get("final") or {}
    original, out = report.get("original_bytes") or 0, report.get("output_bytes") or 0
    cards = [("size", f"{binary_bytes(original)} → {binary_bytes(out)}", f"{report.get('ratio', 0):.1f}x smaller", "")]
    for label, value, tone in metric_rows(report, final):
        if label == "compared on":
            continue
        main, _, rest = value.partition(" (")
        cards.append((label, main, rest.rstrip(")") if rest else "", tone))
    if latency_of(report) is None:
        cards.append(("latency", "not measured", "", ""))
    return '<div class="kpis">' + "".join(
        f'<div class="kpi {tone}"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div>'
        + (f'<div class="d">{esc(d)}</div>' if d else "") + "</div>" for k, v, d, tone in cards) + "</div>"


def _outputs_table(final: Mapping[str, Any]) -> str:
    outputs = final.get("outputs") or {}
    if len(outputs) < 2:
        return ""
    rows = [[(f'<span class="name">{esc(name)}</span>', "name-cell"), (f"{m['cosine']:.5f}", "num"),
             (f"{m['min_sample_cosine']:.5f}" if m.get("min_sample_cosine") is not None else "-", "num"),
             (f"{m['sqnr_db']:.1f}" if m.get("sqnr_db") is not None else "inf", "num"),
             (f"{m['max_abs_error']:.3g}", "num")] for name, m in outputs.items()]
    headers = [("output", ""), (WHOLE_COSINE, "num"), (SAMPLE_COSINE, "num"), ("SQNR (dB)", "num"),
               ("max abs error", "num")]
    return f'<section id="outputs"><h2>Per output</h2>{_table(headers, rows)}</section>'


def _latency_section(report: Mapping[str, Any]) -> str:
    lat = latency_of(report)
    if lat is None:
        return ('<section id="latency"><h2>Latency</h2><p class="muted">Latency was not measured for this run.</p>'
                "</section>")
    slower = latency_verdict(lat) == "slower"
    text = latency_text(lat)
    warn = ('<p class="fail">The output runs slower than the original on this CPU.</p>' if slower else "")
    return (f'<section id="latency"><h2>Latency</h2><p>{esc(latency_label(lat))}: <b>{esc(text)}</b></p>{warn}'
            '<p class="muted">Measured on the machine that ran shrink; a ratio from interleaved runs travels better '
            "than the milliseconds.</p></section>")


def render_html(report: Mapping[str, Any]) -> str:
    """The HTML page for a shrink report (the dict that also goes to JSON)."""
    from onnxshrink import __version__

    final = report.get("final") or {}
    passed = report.get("passed")
    verdict = (f'<span class="verdict {"pass" if passed else "fail"}">gate {"passed" if passed else "FAILED"}: '
               f'{esc(gate_text(report.get("gate") or {}, final))}</span>')
    acc = final.get("accuracy") or {}
    basis = f"{acc['labelled']} labelled samples" if acc.get("labelled") else f"{final.get('samples', 0)} samples"
    warnings = "".join(f'<p class="fail">warning: {esc(w)}</p>' for w in report.get("warnings") or [])
    float16 = report.get("float16_tensors") or []
    f16 = (f'<section id="float16"><h2>Stored as float16</h2><p class="muted">Float tensors stored as float16 '
           f'in the container (lossy; the gate was checked on the model as it unpacks):</p><p class="name">'
           f'{esc(", ".join(float16))}</p></section>') if float16 else ""
    recipe = (report.get("recipe") or {}).get("name", "")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>onnxshrink report: {esc(report.get('model', ''))}</title><style>{STYLE}</style></head><body><main>"
        f'<h1>onnxshrink report</h1><div class="sub"><span class="name">{esc(report.get("model", ""))}</span> → '
        f'<span class="name">{esc(report.get("output", ""))}</span></div>'
        f'<div class="sub">recipe {esc(recipe)}; compared with the original on {esc(basis)}</div>{verdict}'
        f"{warnings}{_kpis(report)}{_outputs_table(final)}{trials_section(report)}{prune_steps_section(report)}"
        f"{layers_section(report)}{_latency_section(report)}{stages_section(report)}{f16}"
        f'<footer class="muted">onnxshrink {esc(__version__)}; JSON schema {esc(report.get("schema", "-"))}; '
        "sizes in binary units (1 KiB = 1024 bytes).</footer></main></body></html>\n"
    )
