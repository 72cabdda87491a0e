"""The shrink HTML report, made by the command on a bundled model: every trial of
the search drawn and listed, the layers under the input model's names,
metrics labelled for what they are, latency, nothing from the network; and,
where Chromium is installed, the page as a browser draws it at 1280 px and
at a phone's 390 px.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import onnx
import pytest
from typer.testing import CliRunner

from conftest import MODELS
from onnxshrink.cli import app
from onnxshrink.report import render_html

CNN = MODELS / "digits_cnn"
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(report dict, HTML text, path of the page) of the quickstart's shrink."""
    tmp = tmp_path_factory.mktemp("html")
    page, js = tmp / "r.html", tmp / "r.json"
    result = CliRunner().invoke(app, ["shrink", f"{CNN}.onnx", "-o", str(tmp / "r.onnxz"), "--calib",
                                      f"{CNN}.calib.npz", "--eval", f"{CNN}.eval.npz", "--max-accuracy-drop", "1",
                                      "--report", str(page), "--json", str(js)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return json.loads(js.read_text()), page.read_text(), page


def _drawings(text: str, section: str) -> list[str]:
    part = re.search(rf'<section id="{section}">(.*?)</section>', text, re.S).group(1)
    return re.findall(r'<svg class="chart (?:wide|narrow)".*?</svg>', part, re.S)


def test_every_trial_is_drawn_and_listed_and_the_kept_one_ringed(made):
    report, text, _ = made
    rows = report["search"]
    assert rows and report["searched"]
    drawn = [str(r["trial"]) for r in rows if r["size_bytes"] is not None]
    chosen = [str(r["trial"]) for r in rows if r["chosen"]]
    for drawing in _drawings(text, "trials"):  # the wide and the narrow drawing
        assert sorted(re.findall(r'data-trial="(\d+)"', drawing)) == sorted(drawn)
        assert re.findall(r'data-chosen="true" data-trial="(\d+)"><title>[^<]*</title><circle[^>]*class="ring"',
                          drawing) == chosen
    table = re.search(r'<section id="trials">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    assert re.findall(r'data-label="trial"><span>(\d+)<', table) == [str(r["trial"]) for r in rows]


def test_pruning_inside_the_kept_trial_is_drawn(made):
    report, text, _ = made
    steps = [s for s in report["prune_search"] if "sparsity" in s]
    assert len(steps) >= 2
    for drawing in _drawings(text, "prune-steps"):
        assert drawing.count('class="point"') == len(steps) and drawing.count('class="ring"') == 1


def test_layers_carry_the_input_models_names_and_what_onnxsim_made_them_from(made):
    report, text, _ = made
    model = onnx.load(f"{CNN}.onnx")
    inputs = {t.name for t in model.graph.initializer} | {n.name for n in model.graph.node}
    assert not re.search(r"_v_\d+", text) and not re.search(r"_v_\d+", json.dumps(report))
    for layer in report["layers"]:
        assert html.escape(layer["name"]) in text and layer["name"] in inputs
        assert all(n in inputs for n in layer["nodes"].split(","))
    conv1 = next(layer for layer in report["layers"] if layer["name"] == "conv1.weight")
    assert "BatchNormalization /bn1/BatchNormalization" in conv1["origin"] and html.escape(conv1["origin"]) in text
    assert {layer["op"] for layer in report["layers"]} == {"Conv", "Gemm"}


def test_metrics_are_labelled_for_what_they_are(made):
    report, text, _ = made
    acc = report["final"]["accuracy"]
    for label in ("output cosine (whole batch)", "lowest per-sample cosine",
                  f"accuracy on {acc['labelled']} labelled samples", "latency (1 thread, median of interleaved runs"):
        assert label in text, label
    lowest = min(m["min_sample_cosine"] for m in report["final"]["outputs"].values())
    assert f"{lowest:.5f}" in text
    assert "KiB" in text and not re.search(r"\d KB\b|\d MB\b", text)
    assert re.search(r'<section id="latency">.*?ms.*?</section>', text, re.S)


def test_the_page_is_self_contained(made):
    _, text, _ = made
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    for outside in ("<script", "<link", "src=", "href=", "url(", "@import", "<img", "<iframe"):
        assert outside not in text, outside
    assert set(re.findall(r"https?://[^\"' ]+", text)) == {"http://www.w3.org/2000/svg"}


def _synthetic_report() -> dict:
    """A report with what a real quickstart run may not show: a trial that
    failed the gate, one that made no model, a layer kept in float, a slower
    output, a cosine gate."""
    def trial(i, size, cosine, passed, chosen, failed=None):
        return {"trial": i, "prune_budget_share": [0.75, 0.5, 0.25, 0.0][i], "pattern": "unstructured",
                "size_bytes": size, "ratio": 2.0, "accuracy_drop": 0.0, "accuracy_drop_points": None,
                "cosine": cosine, "min_sample_cosine": cosine and cosine - 0.1, "passed": passed, "chosen": chosen,
                "reused": False, "failed": failed}
    return {
        "model": "m.onnx", "output": "m.onnxz", "recipe": {"name": "cnn-default"}, "gate": {"min_cosine": 0.99},
        "passed": True, "original_bytes": 4096, "output_bytes": 1024, "ratio": 4.0, "searched": True,
        "search": [trial(0, None, None, False, False, "quantization within the remaining budget"),
                   trial(1, 900, 0.985, False, False), trial(2, 1024, 0.995, True, True), trial(3, 1500, 0.999, True, False)],
        "layers": [{"name": "encoder.w", "nodes": "/enc/MatMul", "op": "MatMul", "params": 64, "sparsity": 0.0,
                    "precision": "float", "kept_float": True, "quant_error": None, "origin": None}],
        "final": {"outputs": {"y": {"cosine": 0.995, "min_sample_cosine": 0.9, "max_abs_error": 0.1, "sqnr_db": 20.0}},
                  "accuracy": None, "latency_ms": {"reference": 1.0, "candidate": 1.4}, "samples": 8},
        "stages": [], "warnings": [],
    }


def test_failed_trials_are_shown_as_such():
    text = render_html(_synthetic_report())
    for drawing in _drawings(text, "trials"):
        assert re.findall(r'data-trial="(\d)"', drawing) == ["1", "3", "2"]  # trial 0 made no model
        assert 'data-passed="false" data-chosen="false" data-trial="1"' in drawing
    assert "quantization within the remaining budget" in text  # trial 0's reason, in the table
    assert "gate: at least 0.99" in text and "output cosine (whole batch)" in text
    assert "kept in float" in text
    assert "SLOWER" in text and 'class="kpi bad"' in text


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")
@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_chromium_draws_the_charts_at_desktop_and_phone_width(made, tmp_path, width, height):
    report, text, _ = made
    probe = """<script>(function(){
      const shown = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
      const charts = [...document.querySelectorAll('svg.chart')].filter(shown).map(s => ({
        section: s.closest('section').id, kind: s.classList.contains('wide') ? 'wide' : 'narrow',
        width: s.getBoundingClientRect().width,
        points: [...s.querySelectorAll('g.point')].filter(shown).length,
        rings: [...s.querySelectorAll('.ring')].filter(shown).length}));
      const out = {inner: window.innerWidth, scroll: document.documentElement.scrollWidth, charts: charts};
      const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);})();</script>"""
    page = tmp_path / "probe.html"
    page.write_text(text.replace("</body>", probe + "</body>"))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"Chromium drew nothing: exit {done.returncode}, {done.stderr[-500:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["scroll"] <= seen["inner"], f"the page scrolls sideways at {width} px: {seen}"
    kind = "wide" if width > 600 else "narrow"
    trials = [c for c in seen["charts"] if c["section"] == "trials"]
    assert [c["kind"] for c in trials] == [kind], seen
    assert trials[0]["points"] == sum(1 for r in report["search"] if r["size_bytes"] is not None) >= 1
    assert trials[0]["rings"] == 1 and 0 < trials[0]["width"] <= seen["inner"]
    steps = [c for c in seen["charts"] if c["section"] == "prune-steps"]
    assert steps and steps[0]["points"] >= 2 and steps[0]["rings"] == 1
