"""Realistic raw inputs for the real-model corpus (issue 16), made offline:
photos bundled in scikit-image's and scikit-learn's wheels, text lines,
captchas and document pages rendered with Pillow (DejaVu fonts where the
system has them, Pillow's own scalable font otherwise), speech synthesized
with espeak-ng and mixed with silence and noise, real files for a
content-type classifier, and sentences for retrieval. Everything is seeded:
the same machine gives the same inputs.
"""

import glob
import os
import shutil
import subprocess
import sysconfig
import tempfile
import wave
from pathlib import Path

import numpy as np

FONT_GLOBS = ["/usr/share/fonts/truetype/dejavu/DejaVu*.ttf", "/usr/share/fonts/truetype/liberation*/*.ttf"]

SENTENCES = [
    "The quarterly report shows revenue grew by 12 percent.",
    "Please keep the fire doors closed at all times.",
    "Invoice No. 2024-0173 is due on 15 March.",
    "Turn left at the second traffic light.",
    "Baked salmon with lemon, dill and new potatoes.",
    "The museum opens at 9:30 on weekdays.",
    "Total amount: 1,284.50 EUR incl. VAT",
    "Warning: high voltage inside, authorised staff only.",
    "Chapter 3. Methods and materials",
    "Store below 25 C away from direct sunlight.",
    "Flight LH 2043 to Munich departs from gate B12.",
    "The committee approved the new budget on Tuesday.",
    "Contact support@example.com for further help.",
    "Figure 2: Accuracy versus model size on the test set.",
    "Batteries must be recycled separately.",
    "Meeting room 4.17, third floor, east wing",
    "Add two cups of flour and stir gently.",
    "The library will be closed for renovation until June.",
    "Order ID 88213-XQ shipped via express courier.",
    "Results are averaged over five random seeds.",
    "No parking between 8 am and 6 pm.",
    "Temperature sensors were calibrated before each run.",
    "Welcome to the annual general meeting 2025",
    "Ticket price: adults 14.00, children 7.50",
    "The bridge was built in 1889 and restored in 1998.",
    "Press the reset button for five seconds.",
    "Our office hours are Monday to Friday, 9 to 5.",
    "Table 1 lists the hyperparameters used in training.",
    "Keep out of reach of children.",
    "Platform 7 for trains to Cambridge and Ely",
]


# Retrieval for the text encoder: each query has one answer among the documents; distractors answer none.
QUERIES = [("When is the invoice due?", "Invoice No. 2024-0173 is due on 15 March."),
           ("Which gate does the Munich flight leave from?", "Flight LH 2043 to Munich departs from gate B12."),
           ("How do I restart the device?", "Press the reset button for five seconds."),
           ("What is for dinner tonight?", "Baked salmon with lemon, dill and new potatoes."),
           ("How much did sales increase?", "The quarterly report shows revenue grew by 12 percent."),
           ("Where should I dispose of old batteries?", "Batteries must be recycled separately."),
           ("Is the library open in May?", "The library will be closed for renovation until June."),
           ("How much is a child's ticket?", "Ticket price: adults 14.00, children 7.50"),
           ("When was the bridge constructed?", "The bridge was built in 1889 and restored in 1998."),
           ("Where can I get help by email?", "Contact support@example.com for further help."),
           ("Which train goes to Cambridge?", "Platform 7 for trains to Cambridge and Ely"),
           ("How should the medicine be stored?", "Store below 25 C away from direct sunlight."),
           ("Can I park here at noon?", "No parking between 8 am and 6 pm."),
           ("What time does the museum open?", "The museum opens at 9:30 on weekdays."),
           ("Where is my parcel?", "Order ID 88213-XQ shipped via express courier."),
           ("What were the training settings?", "Table 1 lists the hyperparameters used in training."),
           ("Who decided on the spending plan?", "The committee approved the new budget on Tuesday."),
           ("How many seeds were the results averaged over?", "Results are averaged over five random seeds."),
           ("Is it safe to open the electrical cabinet?", "Warning: high voltage inside, authorised staff only."),
           ("How do I make the dough?", "Add two cups of flour and stir gently.")]
DISTRACTORS = ["The cat slept on the warm windowsill all afternoon.",
               "Quantum computers use qubits instead of classical bits.",
               "The river flooded the lower town after a week of rain.",
               "She practised the violin every morning before school.",
               "Our team won the regional chess tournament.",
               "A new species of frog was discovered in the rainforest.",
               "The stock market closed slightly lower on Friday.",
               "He repaired the old bicycle with parts from a scrapyard.",
               "The novel is set in a small fishing village in Norway.",
               "Solar panels were installed on the school roof.",
               "The recipe calls for fresh basil and ripe tomatoes.",
               "The match was postponed because of heavy snow."]


def fonts() -> list[str]:
    """TrueType fonts found on this system (may be empty)."""
    found = sorted({p for g in FONT_GLOBS for p in glob.glob(g)})
    return [p for p in found if "ExtraLight" not in p]


def font(size: int, index: int = 0):
    """A Pillow font of ``size`` pixels: the index-th system font, else Pillow's built-in scalable one."""
    from PIL import ImageFont
    paths = fonts()
    if paths:
        return ImageFont.truetype(paths[index % len(paths)], size)
    return ImageFont.load_default(size)


def photos() -> list[tuple[str, np.ndarray]]:
    """Photos shipped in the scikit-image and scikit-learn wheels, as RGB uint8."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images
    out = []
    for name in ["astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "coins", "retina", "page", "text", "cat", "moon", "clock"]:
        fn = getattr(sd, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except (OSError, ValueError, ImportError):  # a data file scikit-image would have to download
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append((name, np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)))
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images):
        out.append((Path(fname).stem, np.asarray(img, dtype=np.uint8)))
    return out


def augment(img: np.ndarray, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """A random crop (60-100 %), maybe mirrored, with brightness/contrast jitter; RGB uint8."""
    h, w = img.shape[:2]
    s = rng.uniform(0.6, 1.0)
    ch, cw = max(16, int(h * s)), max(16, int(w * rng.uniform(0.6, 1.0)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = img[y:y + ch, x:x + cw].astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = (out - 128) * rng.uniform(0.75, 1.25) + 128 + rng.uniform(-25, 25)
    return np.clip(out, 0, 255).astype(np.uint8)


def render_line(text: str, rng: np.random.Generator, height: int = 48, index: int = 0) -> np.ndarray:
    """One text line as an RGB uint8 image about ``height`` pixels tall, varied font, colours, margins."""
    from PIL import Image, ImageDraw
    f = font(int(height * rng.uniform(0.55, 0.75)), index)
    left, top, right, bottom = f.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 12)), int(rng.integers(2, 8))
    bg = tuple(int(v) for v in rng.integers(170, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 90, 3))
    img = Image.new("RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), bg)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=f, fill=fg)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 4, (img.size[1], img.size[0], 1))
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_captcha(text: str, rng: np.random.Generator, size: tuple[int, int] = (150, 50)) -> "object":
    """A captcha-like PIL image of ``text``: jittered glyphs, noise lines and dots, coloured background."""
    from PIL import Image, ImageDraw
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(200, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        d.line([tuple(int(v) for v in rng.integers(0, [w, h])) for _ in range(2)],
               fill=tuple(int(v) for v in rng.integers(60, 200, 3)), width=1)
    x = int(rng.integers(4, 14))
    for i, ch in enumerate(text):
        f = font(int(rng.integers(26, 36)), int(rng.integers(0, 8)))
        d.text((x, int(rng.integers(0, h - 38 + 1))), ch, font=f, fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        x += int(f.getlength(ch)) + int(rng.integers(0, 5))
    for _ in range(60):
        d.point(tuple(int(v) for v in rng.integers(0, [w, h])), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def render_page(rng: np.random.Generator, size: tuple[int, int], photo_list=None, dense: bool = False) -> np.ndarray:
    """A document page (RGB uint8, ``size`` = (width, height)): a header, a title, paragraphs, maybe a
    figure (a photo) with a caption, maybe a ruled table, a footer."""
    from PIL import Image, ImageDraw
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(235, 256, 3)))
    d = ImageDraw.Draw(img)
    margin = int(w * 0.08)
    y = int(h * 0.03)
    fi = int(rng.integers(0, 8))
    small = font(max(9, h // 80), fi)
    d.text((margin, y), SENTENCES[int(rng.integers(len(SENTENCES)))][:40], font=small, fill=(90, 90, 90))
    y += int(h * 0.06)
    title = font(max(14, h // 30), fi + 1)
    d.text((margin, y), SENTENCES[int(rng.integers(len(SENTENCES)))].rstrip("."), font=title, fill=(0, 0, 0))
    y += int(h * 0.07)
    body = font(max(10, h // 60), fi)
    line_h = int(body.size * 1.5)
    while y < h * 0.88:
        choice = rng.random()
        if photo_list and choice < 0.2 and y < h * 0.55:
            name, ph = photo_list[int(rng.integers(len(photo_list)))]
            fw = int((w - 2 * margin) * rng.uniform(0.4, 0.8))
            fh = int(fw * ph.shape[0] / ph.shape[1])
            img.paste(Image.fromarray(ph).resize((fw, fh)), ((w - fw) // 2, y))
            y += fh + 6
            d.text(((w - fw) // 2, y), f"Figure {int(rng.integers(1, 9))}: {name}", font=small, fill=(30, 30, 30))
            y += line_h * 2
        elif choice < 0.35 and y < h * 0.6:
            rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 6))
            tw, cell_h = w - 2 * margin, line_h + 4
            d.text((margin, y), f"Table {int(rng.integers(1, 9))}. Measured values", font=small, fill=(30, 30, 30))
            y += line_h
            for r in range(rows + 1):
                d.line([(margin, y + r * cell_h), (margin + tw, y + r * cell_h)], fill=(0, 0, 0))
            for c in range(cols + 1):
                d.line([(margin + c * tw // cols, y), (margin + c * tw // cols, y + rows * cell_h)], fill=(0, 0, 0))
            for r in range(rows):
                for c in range(cols):
                    v = f"{rng.uniform(0, 100):.1f}" if r else f"col {c + 1}"
                    d.text((margin + c * tw // cols + 4, y + r * cell_h + 2), v, font=body, fill=(0, 0, 0))
            y += rows * cell_h + line_h
        else:
            n = int(rng.integers(2, 8 if dense else 5))
            for _ in range(n):
                if y > h * 0.88:
                    break
                text = " ".join(SENTENCES[int(i)] for i in rng.integers(0, len(SENTENCES), 2))
                while body.getlength(text) > w - 2 * margin and len(text) > 10:
                    text = text[:-5]
                d.text((margin, y), text, font=body, fill=(0, 0, 0))
                y += line_h
            y += line_h
    d.text((margin, int(h * 0.95)), f"Page {int(rng.integers(1, 300))}", font=small, fill=(90, 90, 90))
    return np.asarray(img)


def espeak(text: str, voice: str, speed: int, rate: int = 16000) -> np.ndarray:
    """Speech for ``text`` from espeak-ng, resampled to ``rate`` Hz mono float32 in [-1, 1]."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is needed to make the VAD recordings: apt-get install -y espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "s.wav")
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", wav, text], check=True, capture_output=True)
        with wave.open(wav) as f:
            src_rate = f.getframerate()
            pcm = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    t_new = np.arange(int(len(pcm) * rate / src_rate)) / rate
    return np.interp(t_new, np.arange(len(pcm)) / src_rate, pcm).astype(np.float32)


def recording(rng: np.random.Generator, seconds: float = 14.0, rate: int = 16000) -> tuple[np.ndarray, list]:
    """A recording of espeak-ng utterances separated by silence, over noise (white, hum or babble-like
    filtered noise at a random level); returns the audio and the true speech spans in samples."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    kind = rng.integers(3)
    noise = rng.normal(0, 1, n).astype(np.float32)
    if kind == 1:
        noise = np.sin(2 * np.pi * 50 * t).astype(np.float32) + 0.3 * noise
    elif kind == 2:
        noise = np.convolve(noise, np.ones(40) / 40, mode="same").astype(np.float32) * 6
    audio = noise * float(10 ** rng.uniform(-3.3, -2.0))
    spans, pos = [], int(rate * rng.uniform(0.3, 1.5))
    voices = ["en", "en-us", "en-gb-x-rp", "de", "fr", "es"]
    while True:
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        speech = espeak(text, voices[int(rng.integers(len(voices)))], int(rng.integers(120, 200)), rate)
        speech *= float(rng.uniform(0.3, 0.9)) / max(float(np.abs(speech).max()), 1e-6)
        if pos + len(speech) > n:
            break
        audio[pos:pos + len(speech)] += speech
        spans.append((pos, pos + len(speech)))
        pos += len(speech) + int(rate * rng.uniform(0.4, 2.0))
    return np.clip(audio, -1, 1).astype(np.float32), spans


def sample_files(roots: list[Path], per_kind: int, rng: np.random.Generator) -> list[Path]:
    """Real files for a content-type classifier: up to ``per_kind`` of each file suffix found under
    ``roots`` and in Python's standard library, chosen at random (seeded), at least 64 bytes each."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates: dict[str, list[Path]] = {}
    for root in [*roots, stdlib]:
        for p in sorted(root.rglob("*")) if root.exists() else []:
            if ("site-packages" in p.parts or "__pycache__" in p.parts or not p.is_file() or p.is_symlink()
                    or p.stat().st_size < 64):
                continue
            candidates.setdefault(p.suffix.lower() or p.name, []).append(p)
    chosen = []
    for kind in sorted(candidates):
        files = candidates[kind]
        take = rng.permutation(len(files))[:per_kind]
        chosen += [files[i] for i in sorted(take)]
    return chosen
