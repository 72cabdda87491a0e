"""scripts/bench_prune.py runs (on the smallest bundled model) and writes its table."""

from __future__ import annotations

import pytest

from conftest import ROOT, load_script


@pytest.mark.skipif(not (ROOT / "models" / "digits_mlp.onnx").exists(), reason="bundled models not built")
def test_bench_prune_writes_a_markdown_table(tmp_path):
    bench = load_script("bench_prune")
    out = tmp_path / "prune.md"
    bench.main(["--models", "digits_mlp", "--sparsities", "0.5", "--no-channel", "--out", str(out)])
    text = out.read_text()
    assert "| method | 50% | 2:4 |" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "%" not in line}
    assert {"magnitude", "wanda", "hessian"} <= set(rows)
    hessian = [float(c) for c in rows["hessian"].strip(" |").split("|")[1:]]
    assert all(50.0 < a <= 100.0 for a in hessian)
