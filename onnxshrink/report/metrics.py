"""Metrics named for what they are, for the summaries and the HTML report alike.

"min output cosine" once showed the cosine of the whole output batch while
one sample on the same run was at 0.699: both are shown now, each labelled.
Accuracy says on how many labelled samples; latency says how it was measured
and, plainly, when the output is slower. The labels live here so the
terminal and the HTML say the same thing.
"""

from __future__ import annotations

from typing import Any, Mapping

WHOLE_COSINE = "output cosine (whole batch)"
SAMPLE_COSINE = "lowest per-sample cosine"
LATENCY_HOW = "1 thread, median of interleaved runs"
# Without a measured noise, ratios within this of 1 are "about the same": medians of
# interleaved runs still move a few percent run to run on a shared machine.
DEFAULT_NOISE = 0.05


def cosines(validation: Mapping[str, Any] | None) -> tuple[float | None, float | None]:
    """(lowest whole-batch cosine, lowest per-sample cosine) over the outputs."""
    outputs = (validation or {}).get("outputs") or {}
    whole = [m["cosine"] for m in outputs.values() if m.get("cosine") is not None]
    sample = [m["min_sample_cosine"] for m in outputs.values() if m.get("min_sample_cosine") is not None]
    return (min(whole) if whole else None), (min(sample) if sample else None)


def accuracy_label(accuracy: Mapping[str, Any]) -> str:
    return f"accuracy on {accuracy['labelled']} labelled samples" if accuracy.get("labelled") else "accuracy"


def accuracy_text(accuracy: Mapping[str, Any], *, arrow: str = "→") -> str:
    """``98.89% → 98.06% (−0.83 points; 9 newly wrong, 0 newly right)``."""
    ref, cand = 100 * accuracy["reference"], 100 * accuracy["candidate"]
    text = f"{ref:.2f}% {arrow} {cand:.2f}% ({cand - ref:+.2f} points"
    if accuracy.get("labelled"):
        text += f"; {accuracy.get('lost', 0)} newly wrong, {accuracy.get('gained', 0)} newly right"
    return text + ")"


def latency_of(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The latency of a report, whichever form it carries: a ``latency`` object
    (``reference_ms``, ``candidate_ms``, ``ratio``, ``noise``, ``form``) at the
    top or in ``final``/``validation``, else the older ``latency_ms``
    (``reference``, ``candidate``). None when nothing was measured."""
    if not report:
        return None
    for holder in (report, report.get("final") or {}, report.get("validation") or {}):
        lat = holder.get("latency")
        if isinstance(lat, Mapping) and lat.get("candidate_ms") is not None:
            out = dict(lat)
            if out.get("ratio") is None and out.get("reference_ms"):
                out["ratio"] = out["candidate_ms"] / out["reference_ms"]
            return out
    for holder in (report, report.get("final") or {}, report.get("validation") or {}):
        lat = holder.get("latency_ms")
        if isinstance(lat, Mapping) and lat.get("candidate") is not None:
            ref, cand = lat.get("reference"), lat["candidate"]
            return {"reference_ms": ref, "candidate_ms": cand, "ratio": cand / ref if ref else None,
                    "noise": None, "form": None}
    return None


def latency_verdict(lat: Mapping[str, Any]) -> str | None:
    """``slower``, ``faster`` or ``about the same`` (within the measured noise, a
    fraction of the ratio, else :data:`DEFAULT_NOISE`); None without a reference."""
    ratio = lat.get("ratio")
    if ratio is None:
        return None
    noise = lat["noise"] if isinstance(lat.get("noise"), (int, float)) else DEFAULT_NOISE
    if abs(ratio - 1.0) <= noise:
        return "about the same"
    return "slower" if ratio > 1.0 else "faster"


def latency_text(lat: Mapping[str, Any], *, arrow: str = "→") -> str:
    """``0.027 ms → 0.021 ms (0.77x: faster)``; says SLOWER in capitals when it is."""
    cand = lat["candidate_ms"]
    if lat.get("reference_ms") is None:
        return f"{cand:.3g} ms"
    text = f"{lat['reference_ms']:.3g} ms {arrow} {cand:.3g} ms ({lat['ratio']:.2f}x"
    verdict = latency_verdict(lat)
    text += {"slower": ": the output is SLOWER than the original", "faster": ": faster"}.get(verdict, ": about the same")
    if isinstance(lat.get("noise"), (int, float)):
        text += f", noise ±{100 * lat['noise']:.0f}%"
    return text + ")"


def latency_label(lat: Mapping[str, Any]) -> str:
    form = f", {lat['form']}" if lat.get("form") else ""
    return f"latency ({LATENCY_HOW}{form})"


def gate_text(gate: Mapping[str, Any], validation: Mapping[str, Any] | None = None) -> str:
    """The gate in words: ``accuracy drop ≤ 1 point on 1080 labelled samples``."""
    parts = []
    if gate.get("max_accuracy_drop") is not None:
        acc = (validation or {}).get("accuracy") or {}
        on = f" on {acc['labelled']} labelled samples" if acc.get("labelled") else ""
        drop = gate["max_accuracy_drop"]
        parts.append(f"accuracy drop ≤ {drop:g} point{'' if drop == 1 else 's'}{on}")
    if gate.get("min_cosine") is not None:
        parts.append(f"{WHOLE_COSINE} ≥ {gate['min_cosine']:g}")
    return " and ".join(parts) or "no gate"


def metric_rows(report: Mapping[str, Any], validation: Mapping[str, Any] | None, *,
                arrow: str = "→") -> list[tuple[str, str, str]]:
    """(label, value, tone) for the headline metrics of a run; tone is ``bad``
    for a slower output, else ''."""
    rows: list[tuple[str, str, str]] = []
    validation = validation or {}
    if validation.get("accuracy"):
        acc = validation["accuracy"]
        rows.append((accuracy_label(acc), accuracy_text(acc, arrow=arrow), ""))
    whole, sample = cosines(validation)
    if whole is not None:
        rows.append((WHOLE_COSINE, f"{whole:.5f}", ""))
    if sample is not None:
        rows.append((SAMPLE_COSINE, f"{sample:.5f}", ""))
    lat = latency_of(report) or latency_of({"validation": validation})
    if lat is not None:
        rows.append((latency_label(lat), latency_text(lat, arrow=arrow),
                     "bad" if latency_verdict(lat) == "slower" else ""))
    if validation.get("samples"):
        rows.append(("compared on", f"{validation['samples']} samples"
                     + (" (random inputs)" if validation.get("synthetic_inputs") else ""), ""))
    return rows
