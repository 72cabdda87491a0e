"""The HTML report's search chart: readable with one point, the kept trial ringed."""

from __future__ import annotations

import re

from onnxshrink.report import _fmt_bytes, scatter_chart


def _x_ticks(svg: str) -> list[str]:
    return re.findall(r'class="val">([^<]*)</text>', svg)[:3]


def test_one_point_gets_distinct_byte_ticks_and_a_ring():
    svg = scatter_chart("s", [{"size_bytes": 20_500, "accuracy_drop": 0.8, "passed": True, "chosen": True}],
                        x="size_bytes", y="accuracy_drop", x_label="size", y_label="drop", limit=1.0,
                        x_text=_fmt_bytes)
    ticks = _x_ticks(svg)
    assert len(set(ticks)) == 3 and all(t.endswith("KB") for t in ticks), ticks
    assert svg.count("<circle") == 2  # the point and its ring


def test_only_the_chosen_trial_is_ringed():
    points = [{"size_bytes": s, "accuracy_drop": d, "passed": True, "chosen": c}
              for s, d, c in ((100_000, 0.0, True), (98_000, 0.1, False))]
    svg = scatter_chart("s", points, x="size_bytes", y="accuracy_drop", x_label="size", y_label="drop")
    assert svg.count("<circle") == 3 and svg.count('fill="none"') == 1
