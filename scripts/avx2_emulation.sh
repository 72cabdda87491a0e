#!/usr/bin/env bash
# Run a command as on an x86 CPU with AVX2 but no AVX-512 and no VNNI (Haswell), to see
# what users of such CPUs get from an int8 model: onnxruntime's u8 x s8 kernels there add
# two products into a saturating int16 (vpmaddubsw), where VNNI CPUs (like the dev
# machine) are exact.
#
#   scripts/avx2_emulation.sh python -m pytest -q tests/test_quantize.py
#   scripts/avx2_emulation.sh onnxshrink quantize models/digits_cnn.onnx -o /tmp/q.onnx --calib models/digits_cnn.calib.npz
#
# How: qemu user-mode emulation (apt-get install qemu-user; QEMU >= 7.2 emulates AVX2)
# runs the Python interpreter with the CPU model $AVX2_CPU (default Haswell). A shadow
# of the active venv in a temporary folder has a `python` (and `onnxshrink`) that start
# under qemu, first on PATH, so child processes that run sys.executable (the CLI tests)
# are emulated too. Before the command it prints the SIMD flags the emulated CPU reports
# and checks that onnxruntime there really saturates: MatMulInteger of uint8 255 by
# int8 127 over 32 terms must give 524272 (16 saturated pairs), not 1036320. Writes
# nothing outside a temporary folder, which it removes. Emulation is slow: roughly 10-50x.
# The Python is $PYTHON (default: `python` on PATH; a venv's is used with its packages);
# inside the command call it `python` or `onnxshrink`, not by a path, to stay emulated.
set -euo pipefail
if [ $# -eq 0 ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command -v qemu-x86_64 >/dev/null || { echo "avx2_emulation: qemu-x86_64 not found (apt-get install qemu-user)" >&2; exit 2; }
cpu="${AVX2_CPU:-Haswell}"
# Features of the Haswell model that TCG cannot emulate: switched off so qemu does not warn per thread.
cpu_spec="$cpu,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
host_python="${PYTHON:-python}"
read -r base prefix < <("$host_python" -c 'import sys; print(sys._base_executable, sys.prefix if sys.prefix != sys.base_prefix else "")')
shadow=$(mktemp -d "${TMPDIR:-/tmp}/avx2-emulation.XXXXXX")
trap 'rm -rf "$shadow"' EXIT
mkdir -p "$shadow/bin"
# Python finds its environment through the pyvenv.cfg beside its executable's folder:
# the shadow has the venv's (and its site-packages through a lib symlink), or without a
# venv one that points at the interpreter's own installation.
if [ -n "$prefix" ]; then
  cp "$prefix/pyvenv.cfg" "$shadow/"
  ln -s "$prefix/lib" "$shadow/lib"
else
  printf 'home = %s\ninclude-system-site-packages = true\n' "$(dirname "$base")" > "$shadow/pyvenv.cfg"
fi
cat > "$shadow/bin/python" <<EOF
#!/bin/sh
exec qemu-x86_64 -cpu "$cpu_spec" -0 "\$0" "$base" "\$@"
EOF
cat > "$shadow/bin/onnxshrink" <<EOF
#!/bin/sh
exec "$shadow/bin/python" -c "from onnxshrink.cli import main; main()" "\$@"
EOF
ln -s python "$shadow/bin/python3"
chmod +x "$shadow/bin/python" "$shadow/bin/onnxshrink"
export PATH="$shadow/bin:$PATH"

python - "$cpu" <<'PY'
import sys

import numpy as np
import onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as features
from onnx import TensorProto, helper, numpy_helper

shown = ("SSE41", "AVX", "F16C", "FMA3", "AVX2", "AVX512F", "AVX512BW", "AVX512VL", "AVX512VNNI")
print(f"avx2_emulation: qemu -cpu {sys.argv[1]}: " + " ".join(f"{k}={'yes' if features.get(k) else 'no'}" for k in shown))
k = 32
graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "saturation",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
                          [numpy_helper.from_array(np.full((k, 1), 127, np.int8), "b")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
got = int(session.run(None, {"a": np.full((1, k), 255, np.uint8)})[0][0, 0])
exact, saturated = 255 * 127 * k, 32767 * (k // 2)
kind = {exact: "exact (a VNNI-like kernel: not the CPU this script is for)",
        saturated: "saturated pairs (the AVX2 u8 x s8 kernel)"}.get(got, "neither")
print(f"avx2_emulation: onnxruntime {ort.__version__} u8 255 x s8 127 over {k} terms = {got}: {kind}")
sys.exit(0 if got == saturated else 3)
PY
"$@"
