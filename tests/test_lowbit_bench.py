"""scripts/bench_lowbit.py runs (on the smallest bundled model) and writes its table."""

from __future__ import annotations

import pytest

from conftest import ROOT, load_script


@pytest.mark.skipif(not (ROOT / "models" / "digits_mlp.onnx").exists(), reason="bundled models not built")
def test_bench_lowbit_writes_a_markdown_table(tmp_path):
    bench = load_script("bench_lowbit")
    out = tmp_path / "lowbit.md"
    bench.main(["--models", "digits_mlp", "--no-latency", "--out", str(out)])
    row = next(line for line in out.read_text().splitlines() if line.startswith("| digits_mlp"))
    cells = [c.strip() for c in row.strip(" |").split("|")[1:]]
    assert len(cells) == len(bench.HEADER.strip(" |").split("|")) - 1
    fp32, int8, drop = map(float, cells[:3])
    assert drop <= 0.2 and abs(fp32 - int8 - drop) < 0.01
    assert all(50.0 < float(c) <= 100.0 for c in cells[7:])
