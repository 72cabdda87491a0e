"""The real-model corpus's task checks (scripts/real_corpus_tasks.py) and the
benchmark's table writer (scripts/bench_real.py), without network; the
end-to-end check runs only where the corpus is cached (scripts/real_corpus.py)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tasks = _load("real_corpus_tasks")


def test_box_iou_of_overlapping_disjoint_and_degenerate_boxes():
    ious = tasks.box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]]))
    assert ious.shape == (1, 3)
    assert ious[0, 0] == pytest.approx(50 / 150)
    assert ious[0, 1] == 0.0 and ious[0, 2] == 0.0


def test_detections_match_once_per_box_and_only_within_a_class():
    ref = [("face", 0, 0, 10, 10), ("face", 100, 100, 110, 110)]
    # one candidate overlaps the first box twice over; a third has the right place but the wrong class
    cand = [("face", 0, 0, 10, 10), ("face", 1, 0, 11, 10), ("foot", 100, 100, 110, 110)]
    assert tasks.match_detections(ref, cand) == 1
    f1, details = tasks.detection_agreement([ref], [cand])
    assert f1 == pytest.approx(2 * 1 / (2 + 3))
    assert details["images_identical"] == 0


def test_detection_agreement_at_the_iou_threshold():
    ref = [[("t", 0, 0, 10, 10)]]
    barely = [[("t", 0, 0, 10, 5)]]        # IoU exactly 0.5: matched
    under = [[("t", 0, 0, 10, 4.9)]]       # just under: not matched
    assert tasks.detection_agreement(ref, barely)[0] == 1.0
    assert tasks.detection_agreement(ref, under)[0] == 0.0
    assert tasks.detection_agreement([[]], [[]])[0] == 1.0


def test_ctc_greedy_decode_merges_repeats_then_drops_blanks():
    assert tasks.ctc_greedy_decode([0, 3, 3, 0, 3, 5, 5, 5, 0, 0]) == [3, 3, 5]
    assert tasks.ctc_greedy_decode([7, 7, 2], blank=7) == [2]
    assert tasks.ctc_greedy_decode([]) == []


def test_string_agreement_counts_exact_strings_and_character_similarity():
    assert tasks.edit_distance("kitten", "sitting") == 3
    agreement, details = tasks.string_agreement(["abcd", "hello", ""], ["abcd", "hallo", ""])
    assert agreement == pytest.approx(2 / 3)
    assert details["char_similarity"] == pytest.approx((1 + 0.8 + 1) / 3)
    assert details["first_changed"] == [("hello", "hallo")]


def test_label_agreement():
    agreement, details = tasks.label_agreement(["0", "90", "180", "270"], ["0", "90", "0", "270"])
    assert agreement == 0.75 and details["first_flips"] == [("180", "0")]


def test_segment_iou_and_vad_agreement():
    assert tasks.segment_iou([(0, 100)], [(50, 150)], 200) == pytest.approx(50 / 150)
    assert tasks.segment_iou([], [], 10) == 1.0
    assert tasks.segment_iou([(0, 10)], [], 10) == 0.0
    agreement, details = tasks.vad_agreement([[(0, 100), (200, 300)]], [[(0, 100)]], [400])
    assert agreement == pytest.approx(0.5)
    assert details["reference_segments"] == 2 and details["candidate_segments"] == 1
    assert details["segment_f1"] == pytest.approx(2 / 3)


def test_retrieval_agreement_sees_a_changed_ranking():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(6, 8))
    queries = docs[:3] + 0.05 * rng.normal(size=(3, 8))  # each query near its own document
    same = tasks.retrieval_agreement(queries, docs, queries * 3.0, docs)  # scale does not change cosine
    assert same[0] == 1.0 and same[1]["spearman"] == pytest.approx(1.0)
    swapped = docs.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # the candidate embeds documents 0 and 1 as each other
    agreement, details = tasks.retrieval_agreement(queries, docs, queries, swapped)
    assert agreement == pytest.approx(1 / 3)
    assert details["spearman"] < 1.0


def test_spearman_of_reversed_ranks():
    assert tasks.spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)


def test_markdown_table_escapes_pipes_and_newlines():
    text = tasks.markdown_table(["model", "note"], [["a|b", "line1\nline2"], ["c", ""]])
    lines = text.splitlines()
    assert len(lines) == 4
    assert all(line.count("|") - line.count("\\|") == 3 for line in lines)
    assert "a\\|b" in lines[2] and "line1 line2" in lines[2]


def test_bench_writer_keeps_the_prose_around_its_markers(tmp_path):
    bench = _load("bench_real")
    doc = tmp_path / "real.md"
    doc.write_text(f"# Title\n\nbefore\n\n{bench.BEGIN}\nold table\n{bench.END}\n\nafter\n")
    info = {"date": "2026-01-01", "cpu": "test cpu", "cores": 2, "onnxruntime": "1.0", "python": "3.11",
            "flags": {"avx512_vnni": False, "avx_vnni": False, "avx2": True, "avx512f": False}}
    rows = [{"model": "m1", "configuration": "fp32", "size": 1000, "ratio": 1.0, "agreement": 1.0, "details": {},
             "cosine": 1.0, "latency_ratio": 1.0, "status": "reference"},
            {"model": "m1", "configuration": "w8", "size": None, "ratio": None, "agreement": None,
             "details": {}, "cosine": None, "latency_ratio": None, "exit": 3, "status": "exit 3 in 2 s: boom | bad"},
            {"model": "m1", "configuration": "w4", "size": 250, "ratio": 4.0, "agreement": 0.5, "details": {},
             "cosine": 0.9, "latency_ratio": 1.5, "exit": 0, "status": "exit 0 in 1 s"}]
    bench.write(doc, rows, info, ["m1"])
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text and "avx2 yes" in text and "avx512_vnni no" in text
    lines = [line for line in text.splitlines() if line.startswith("| m1")]
    assert lines[0] == "| m1 | 1,000 | exit 3 | 4.0x / 0.500 / 1.50 |"  # the matrix: one row per model
    assert len(lines) == 4 and "boom \\| bad" in lines[2]  # then one row per run
    assert (tmp_path / "real.json").exists()


def test_cached_model_agrees_with_itself_and_not_with_a_broken_copy(tmp_path):
    """End to end on magika (the smallest model) when the corpus is cached and magika is installed."""
    pytest.importorskip("magika")
    onnx = pytest.importorskip("onnx")
    corpus = _load("real_corpus")
    p = corpus.paths("magika_v3_3", corpus.default_cache())
    if not (p.model.exists() and p.eval.exists() and p.meta.exists()):
        pytest.skip("corpus not cached: run scripts/real_corpus.py --models magika_v3_3")
    agreement, details = corpus.task_agreement(p.model, p.model, p.eval)
    assert agreement == 1.0 and details["output_cosine"] == pytest.approx(1.0)
    model = onnx.load(str(p.model))
    biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    values = onnx.numpy_helper.to_array(biggest)
    biggest.CopyFrom(onnx.numpy_helper.from_array(values[::-1].copy(), biggest.name))  # scramble a weight
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    agreement, details = corpus.task_agreement(broken, p.model, p.eval)
    assert agreement < 0.9
