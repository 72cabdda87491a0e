"""The HTML report's charts and labels: readable with one point, the kept trial
ringed, failed trials drawn apart, sizes in binary units, latency said plainly."""

from __future__ import annotations

import re

from onnxshrink.report.charts import nice_ticks, scatter_chart
from onnxshrink.report.metrics import latency_of, latency_text, metric_rows
from onnxshrink.units import binary_bytes


def _drawings(svg: str) -> list[str]:
    return re.findall(r"<svg class=\"chart (?:wide|narrow)\".*?</svg>", svg)


def _x_ticks(drawing: str) -> list[str]:
    return re.findall(r'text-anchor="middle" class="tick">([^<]*)</text>', drawing)


def test_one_point_gets_distinct_byte_ticks_and_a_ring():
    svg = scatter_chart([{"size": 20_500, "drop": 0.8, "passed": True, "chosen": True, "trial": 0}],
                        x="size", y="drop", x_label="size", y_label="drop", limit=1.0, x_text=binary_bytes)
    drawings = _drawings(svg)
    assert len(drawings) == 2  # wide and narrow
    for drawing in drawings:
        ticks = _x_ticks(drawing)
        assert len(ticks) >= 2 and len(set(ticks)) == len(ticks) and all(t.endswith("KiB") for t in ticks), ticks
        assert drawing.count('class="ring"') == 1 and drawing.count('class="limit"') == 1


def test_only_the_chosen_trial_is_ringed_and_failed_ones_are_crosses():
    points = [{"size": s, "drop": d, "passed": p, "chosen": c, "trial": i}
              for i, (s, d, p, c) in enumerate(((100_000, 0.0, True, True), (98_000, 0.1, True, False),
                                               (90_000, 2.0, False, False)))]
    for drawing in _drawings(scatter_chart(points, x="size", y="drop", x_label="size", y_label="drop")):
        assert drawing.count('class="ring"') == 1
        assert re.findall(r'data-trial="(\d)"', drawing) == ["1", "2", "0"]  # the chosen one drawn last, on top
        assert drawing.count('data-passed="false"') == 1 and drawing.count("<path d=\"M") == 1


def test_points_without_a_value_are_not_drawn():
    svg = scatter_chart([{"size": None, "drop": None, "passed": False, "chosen": False, "trial": 0},
                         {"size": 5, "drop": 1.0, "passed": True, "chosen": True, "trial": 1}],
                        x="size", y="drop", x_label="size", y_label="drop")
    assert svg.count('class="point"') == 2  # one point, in each of the two drawings


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    ticks = nice_ticks(18_600, 21_500, 3)
    assert ticks[0] >= 18_600 and ticks[-1] <= 21_500 and all(t % 500 == 0 for t in ticks)


def test_sizes_are_binary_and_say_so():
    assert binary_bytes(1023) == "1023 B"
    assert binary_bytes(20_527) == "20.0 KiB"
    assert binary_bytes(627_506) == "612.8 KiB"
    assert binary_bytes(3 * 1024**2) == "3.0 MiB"
    assert binary_bytes(None) == "-"


def test_latency_says_plainly_when_the_output_is_slower():
    slower = latency_of({"final": {"latency_ms": {"reference": 0.010, "candidate": 0.013}}})
    assert "SLOWER" in latency_text(slower)
    faster = latency_of({"latency": {"reference_ms": 2.0, "candidate_ms": 1.0, "ratio": 0.5, "noise": 0.05}})
    assert latency_text(faster) == "2 ms → 1 ms (0.50x: faster, noise ±5%)"
    within = latency_of({"latency": {"reference_ms": 1.0, "candidate_ms": 1.03, "ratio": 1.03, "noise": 0.05}})
    assert "about the same" in latency_text(within)
    rows = metric_rows({"final": {"latency_ms": {"reference": 0.010, "candidate": 0.013}}}, {})
    assert [tone for label, _, tone in rows if label.startswith("latency")] == ["bad"]


def test_cosines_are_named_for_what_they_are():
    validation = {"outputs": {"a": {"cosine": 0.97, "min_sample_cosine": 0.70},
                              "b": {"cosine": 0.99, "min_sample_cosine": 0.95}},
                  "accuracy": {"reference": 0.99, "candidate": 0.98, "labelled": 1080, "lost": 9, "gained": 0}}
    rows = {label: value for label, value, _ in metric_rows({}, validation)}
    assert rows["output cosine (whole batch)"] == "0.97000"
    assert rows["lowest per-sample cosine"] == "0.70000"
    assert rows["accuracy on 1080 labelled samples"].startswith("99.00% → 98.00% (-1.00 points; 9 newly wrong")
