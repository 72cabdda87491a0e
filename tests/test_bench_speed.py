"""scripts/bench_speed.py runs on one small model and writes its tables: every
configuration of issue 17 side by side, the forms each ran in, and the bars."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_speed_quick_writes_the_tables(tmp_path):
    out = tmp_path / "speed.md"
    out.write_text("# Speed\n\nprose kept\n\n<!-- bench_speed.py writes below this line -->\n\nold tables\n")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_speed.py"), "--models", "digits_mlp",
                          "--no-corpus", "--quick", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# Speed\n\nprose kept\n") and "old tables" not in text
    rows = [line for line in text.splitlines() if line.startswith("| digits_mlp |")]
    configs = [row.split("|")[2].strip() for row in rows[:5]]
    assert configs == ["fp32", "ours static int8", "onnxruntime int8", "ours shrink --weight-bits 4,8, default form",
                       "ours weight-only int8, default form"]
    shrunk = rows[3]
    # the forms its weights run in (low-bit kernels, or static int8 when shrink measured that faster)
    assert any(form in shrunk.split("|")[8] for form in ("MatMulNBits", "int+DQ"))
    assert "x" in shrunk.split("|")[3]  # a measured latency ratio
    assert "avx2" in text or "flags unknown" in text  # the CPU behind the figures is named
    assert "our static int8 / onnxruntime's int8 latency" in text
    assert len(rows) == 6  # and the forms table: qdq / native / float / auto
