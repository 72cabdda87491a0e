"""scripts/bench_pack.py runs (on one small model) and writes a table whose
packed sizes beat zstd -19 and stay near the entropy bound."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_quick_writes_a_markdown_table(tmp_path):
    out = tmp_path / "bench.md"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pack.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert text in run.stdout
    head, rows = text.splitlines()[0], [line for line in text.splitlines()[2:] if line.startswith("| ")]
    assert "packed / zstd" in head and "decode MB/s" in head and "zstd -d MB/s" in head and len(rows) == 7
    columns = [c.strip() for c in head.strip("|").split("|")]
    for row in rows:
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
        assert float(cells["tensors / entropy"]) < 1.06, row
        if cells["packed / zstd"] != "-":
            assert float(cells["packed / zstd"]) < 1.0, row
