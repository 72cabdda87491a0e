"""The shrink report: the per-layer rows (:mod:`.layers`), metrics with honest
labels (:mod:`.metrics`), and the self-contained HTML page (:mod:`.html`,
charts in :mod:`.charts`). The JSON report is the same dict; its fields are
documented in docs/json.md."""

from onnxshrink.report.html import render_html

__all__ = ["render_html"]
