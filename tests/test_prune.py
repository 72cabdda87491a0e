"""Unstructured and 2:4 pruning: exact sparsity and patterns, only weights change,
shared weights once, Hessian reconstruction beats magnitude, targets hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxshrink.data import Batch
from onnxshrink.errors import UsageError
from onnxshrink.model import iter_weights
from onnxshrink.pruning import PruneOptions, n_m_holds, prune_model
from onnxshrink.stats.obs import obs_prune, reconstruction_error
from onnxshrink.runtime import create_session

WEIGHTS = {"conv_w", "gemm_w", "mm_w"}


def small_net(seed: int = 0) -> onnx.ModelProto:
    """Conv(+bias) -> BN -> Relu -> Flatten -> Gemm(+bias) -> Relu -> MatMul -> Add(bias).
    Weights are conv_w, gemm_w, mm_w; everything else must never change."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {
        "conv_w": f(8, 4, 3, 3), "conv_b": f(8),
        "bn_s": 1 + 0.1 * f(8), "bn_b": f(8), "bn_m": f(8), "bn_v": 1 + np.abs(f(8)),
        "gemm_w": f(32, 8 * 6 * 6) * 0.1, "gemm_b": f(32), "mm_w": f(32, 12) * 0.3, "mm_b": f(12),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Flatten", ["r"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "gemm_w", "gemm_b"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["gr"]),
        helper.make_node("MatMul", ["gr", "mm_w"], ["mm"]),
        helper.make_node("Add", ["mm", "mm_b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 12])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def calib(n: int = 64, seed: int = 1) -> list[Batch]:
    """Inputs with correlated features (12 latent factors), as real data has."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((12, 144))
    x = rng.standard_normal((n, 12)) @ mix + 0.1 * rng.standard_normal((n, 144))
    x = x.reshape(n, 4, 6, 6).astype(np.float32)
    return [Batch({"x": x[i:i + 32]}) for i in range(0, n, 32)]


def tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {r.name: r.array() for r in iter_weights(model)}


def run(model: onnx.ModelProto, batches: list[Batch]) -> np.ndarray:
    s = create_session(model)
    return np.concatenate([s.run(None, b.inputs)[0] for b in batches])


@pytest.mark.parametrize("method", ["magnitude", "wanda", "hessian"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_only_weights_change_and_patterns_hold(method, pattern):
    model = small_net()
    before = model.SerializeToString()
    data = calib()
    result = prune_model(model, PruneOptions(sparsity=0.6, pattern=pattern, method=method, min_size=64), calib=data)
    assert model.SerializeToString() == before  # the caller's model is left alone
    old, new = tensors(model), tensors(result.model)
    assert old.keys() == new.keys()
    for name in old:
        if name not in WEIGHTS:
            assert old[name].tobytes() == new[name].tobytes(), name
    report = {t.name: t for t in result.report.tensors}
    assert set(report) == WEIGHTS
    in_axis = {"conv_w": 1, "gemm_w": 1, "mm_w": 0}
    for name in WEIGHTS:
        zeros = int((new[name] == 0).sum())
        assert report[name].zeros_after == zeros
        if pattern == "2:4":
            assert n_m_holds(new[name], in_axis[name], 2, 4), name
            assert zeros == new[name].size // 2
    if pattern == "unstructured":
        total = sum(new[n].size for n in WEIGHTS)
        assert abs(sum(int((new[n] == 0).sum()) for n in WEIGHTS) / total - 0.6) < 0.01
    out = run(result.model, data)
    assert np.isfinite(out).all() and out.shape == (64, 12)


def test_layer_scope_gives_every_tensor_the_sparsity_exactly():
    result = prune_model(small_net(), PruneOptions(sparsity=0.5, scope="layer", min_size=0))
    for t in result.report.tensors:
        assert t.zeros_after == round(0.5 * t.params), t.name


def test_two_four_skips_tensors_whose_input_axis_does_not_fit():
    model = small_net()
    w = np.random.default_rng(3).standard_normal((6, 8, 3, 3)).astype(np.float32)  # input axis 4? no: 6 != 4k
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w[:, :3], "conv_w"))  # 3 input channels
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros(6, np.float32), "conv_b"))
    for i, n in enumerate(("bn_s", "bn_b", "bn_m", "bn_v")):
        model.graph.initializer[2 + i].CopyFrom(numpy_helper.from_array(np.ones(6, np.float32), n))
    model.graph.initializer[6].CopyFrom(numpy_helper.from_array(np.ones((32, 6 * 36), np.float32), "gemm_w"))
    result = prune_model(model, PruneOptions(sparsity=0.5, pattern="2:4", min_size=0))
    by = {t.name: t for t in result.report.tensors}
    assert by["conv_w"].method == "none" and by["conv_w"].zeros_after == 0
    assert n_m_holds(tensors(result.model)["gemm_w"], 1)  # constant tensor: ties still give exactly 2 of 4


def test_shared_weight_is_pruned_once():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((40, 16)).astype(np.float32)
    for method in ("magnitude", "hessian"):
        result = prune_model(model, PruneOptions(sparsity=0.5, method=method, min_size=0), calib=[Batch({"x": x})])
        assert [t.name for t in result.report.tensors] == ["w"]
        assert int((tensors(result.model)["w"] == 0).sum()) == 128


def test_hessian_reconstruction_beats_magnitude_on_the_layer_output():
    rng = np.random.default_rng(0)
    # correlated inputs: where OBS's updates pay off
    x = rng.standard_normal((512, 8)) @ rng.standard_normal((8, 48))
    h = (x.T @ x / len(x))[None]
    w = rng.standard_normal((1, 24, 48))
    pruned = obs_prune(w, h, sparsity=0.7)
    assert (pruned == 0).sum() >= round(0.7 * w.size) - 24
    mag = np.where(np.abs(w) <= np.quantile(np.abs(w), 0.7), 0.0, w)
    assert reconstruction_error(w, pruned, h) < 0.5 * reconstruction_error(w, mag, h)
    nm = obs_prune(w, h, n_m=(2, 4))
    assert n_m_holds(nm[0], 1, 2, 4)


def test_hessian_beats_magnitude_on_held_out_outputs():
    model, data, held = small_net(), calib(256), calib(128, seed=7)
    dense = run(model, held)
    errors = {}
    for method in ("magnitude", "hessian"):
        out = run(prune_model(model, PruneOptions(sparsity=0.7, method=method, min_size=64), calib=data).model, held)
        errors[method] = float(((out - dense) ** 2).sum() / (dense**2).sum())
    assert errors["hessian"] < 0.5 * errors["magnitude"]


def test_default_method_follows_the_data_and_needs_calibration():
    assert prune_model(small_net(), PruneOptions(sparsity=0.3)).report.method == "magnitude"
    assert prune_model(small_net(), PruneOptions(sparsity=0.3), calib=calib()).report.method == "hessian"
    with pytest.raises(UsageError, match="--calib"):
        prune_model(small_net(), PruneOptions(sparsity=0.3, method="wanda"))
    with pytest.raises(UsageError):
        PruneOptions()  # neither sparsity nor target
    with pytest.raises(UsageError):
        PruneOptions(sparsity=1.0)


def test_min_size_and_exclude_leave_weights_alone():
    result = prune_model(small_net(), PruneOptions(sparsity=0.5, min_size=200, exclude=("mm_*",)))
    assert {t.name for t in result.report.tensors} == {"conv_w", "gemm_w"}
    assert result.report.skipped["mm_w"] == "excluded"
    assert "min-size" in prune_model(small_net(), PruneOptions(sparsity=0.5, min_size=300)).report.skipped["conv_w"]
    assert not (tensors(result.model)["mm_w"] == 0).any()


def test_cosine_target_is_met_with_per_layer_sparsity():
    model, data = small_net(), calib(64)
    result = prune_model(model, PruneOptions(min_cosine=0.99, min_size=64), calib=data, eval_data=data)
    assert result.report.validation.passed
    assert min(o["cosine"] for o in result.report.validation.outputs.values()) >= 0.99
    assert result.report.weight_sparsity > 0.3
    assert result.report.search and all("cosine" in s for s in result.report.search if s["passed"])
    # a cap on sparsity is respected
    capped = prune_model(model, PruneOptions(min_cosine=0.99, sparsity=0.2, min_size=64), calib=data, eval_data=data)
    assert capped.report.weight_sparsity <= 0.2 + 1e-9


def test_searches_with_another_target_reuse_the_scan_and_give_what_a_fresh_search_gives(monkeypatch):
    """shrink's trials search the same model with different targets: the
    sensitivity scan (every layer at every level) and the allocations already
    measured carry over through ``scan_cache``, and the results are unchanged."""
    from onnxshrink.pruning import allocation
    from onnxshrink.stats import obs

    model, data = small_net(), calib(64)
    targets = [PruneOptions(min_cosine=c, min_size=64) for c in (0.995, 0.99, 0.98)]
    scans, measured, factors = [0], [0], [0]
    real_scan, real_measure, real_factor = allocation._scan, allocation.OutputChecker.measure, obs.inverse_cholesky

    def counting(counter, real):
        def wrapped(*args, **kwargs):
            counter[0] += 1
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(allocation, "_scan", counting(scans, real_scan))
    monkeypatch.setattr(allocation.OutputChecker, "measure", counting(measured, real_measure))
    monkeypatch.setattr(obs, "inverse_cholesky", counting(factors, real_factor))
    fresh = [prune_model(model, o, calib=data, eval_data=data).model.SerializeToString() for o in targets]
    fresh_scans, fresh_measures = scans[0], measured[0]
    scans[0] = measured[0] = factors[0] = 0
    cache: dict = {}
    reused = [prune_model(model, o, calib=data, eval_data=data, scan_cache=cache).model.SerializeToString()
              for o in targets]
    assert reused == fresh
    assert (fresh_scans, scans[0], len(cache)) == (3, 1, 1)
    # Two factorisations per layer (3 layers) for the dozen levels of the scan, not one per level:
    # one when every layer is first pruned at its lowest level (is anything prunable?), one for the rest.
    assert factors[0] == 6
    # No probes again, and allocations already measured are not measured again.
    assert measured[0] < fresh_measures / 2, (measured[0], fresh_measures)
    # Other options (here the pruning method) get a scan of their own.
    prune_model(model, PruneOptions(min_cosine=0.99, min_size=64, method="wanda"), calib=data, eval_data=data,
                scan_cache=cache)
    assert scans[0] == 2 and len(cache) == 2


def test_the_reused_factorisation_belongs_to_the_hessian_given():
    from onnxshrink.stats import obs

    rng = np.random.default_rng(3)
    w = rng.standard_normal((1, 6, 20))
    x1, x2 = rng.standard_normal((200, 20)), rng.standard_normal((200, 20)) * np.linspace(0.1, 3, 20)
    h1, h2 = (x1.T @ x1)[None], (x2.T @ x2)[None]
    a = obs_prune(w, h1, sparsity=0.5)
    b = obs_prune(w, h2, sparsity=0.5)  # another Hessian right after: its own factors
    obs._last_factor = None
    assert np.array_equal(b, obs_prune(w, h2, sparsity=0.5))
    assert np.array_equal(a, obs_prune(w, h1, sparsity=0.5)) and not np.array_equal(a, b)
    # Same array again with another damping: factored again, as a fresh call would.
    c = obs_prune(w, h1, sparsity=0.5, damp=0.5)
    obs._last_factor = None
    assert np.array_equal(c, obs_prune(w, h1, sparsity=0.5, damp=0.5)) and not np.array_equal(a, c)


def test_accuracy_target_needs_inputs_to_compare_on():
    with pytest.raises(UsageError, match="--eval DATA or --calib DATA"):
        prune_model(small_net(), PruneOptions(max_accuracy_drop=1.0))


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"


@pytest.mark.skipif(not LIGHT.exists(), reason="onnx's light test models are not installed")
def test_light_squeezenet_after_simplify_prunes_and_runs():
    from onnxshrink.simplify import simplify

    model = simplify(onnx.load(LIGHT)).model
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    dense = create_session(model).run(None, {model.graph.input[0].name: x})[0]
    for pattern in ("unstructured", "channel"):
        result = prune_model(model, PruneOptions(sparsity=0.5, pattern=pattern, method="magnitude"))
        out = create_session(result.model).run(None, {model.graph.input[0].name: x})[0]
        assert out.shape == dense.shape and np.isfinite(out).all()
        if pattern == "unstructured":
            weights = {t.name for t in result.report.tensors}
            old, new = tensors(model), tensors(result.model)
            assert all(old[n].tobytes() == new[n].tobytes() for n in old if n not in weights)
            assert abs(result.report.weight_sparsity - 0.5) < 0.01
        else:
            assert result.report.params_after < result.report.params_before


def test_cosine_target_needs_some_data():
    with pytest.raises(UsageError, match="--min-cosine"):
        prune_model(small_net(), PruneOptions(min_cosine=0.99))


def test_nothing_prunable_under_the_target_is_found_before_the_scan(monkeypatch):
    """A target no layer meets even pruned alone at the lowest level: the scan
    stops after that level (one OBS sweep per layer, not a dozen), the search is
    skipped, and the report says so."""
    from onnxshrink.pruning import allocation

    model, data = small_net(), calib(64)
    sweeps = [0]
    real = allocation.pruned_array

    def counting(*args, **kwargs):
        sweeps[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(allocation, "pruned_array", counting)
    result = prune_model(model, PruneOptions(min_cosine=0.99999999, min_size=64), calib=data, eval_data=data)
    assert sweeps[0] == 3  # the three layers, at 25 % each
    assert not result.modified
    assert {t.name: t.raw_data for t in result.model.graph.initializer} == \
        {t.name: t.raw_data for t in model.graph.initializer}
    assert any(n.startswith("nothing prunable under the target") for n in result.report.notes)
    assert result.report.search == [{"step": 0, "skipped": result.report.notes[0]}]
    # A looser target on the same scan cache takes the scan up again and prunes.
    cache: dict = {}
    prune_model(model, PruneOptions(min_cosine=0.99999999, min_size=64), calib=data, eval_data=data, scan_cache=cache)
    looser = prune_model(model, PruneOptions(min_cosine=0.99, min_size=64), calib=data, eval_data=data,
                         scan_cache=cache)
    assert looser.modified and not looser.report.notes


def test_a_model_without_prunable_weights_is_said_at_once(monkeypatch):
    from onnxshrink import pruning

    monkeypatch.setattr(pruning, "collect_layer_inputs", lambda *a, **k: pytest.fail("statistics collected"))
    model = small_net()
    result = prune_model(model, PruneOptions(min_cosine=0.99, min_size=10**6), calib=calib(64), eval_data=calib(64))
    assert not result.modified
    assert result.report.notes == ["no prunable weight: all 3 layer weights were skipped (see 'skipped')"]


def test_a_single_layer_that_meets_the_target_is_kept_when_the_search_finds_nothing(monkeypatch):
    """The check before the scan finds a layer that can be pruned alone at its lowest
    level; when the bisection over the knob measures nothing that passes (here it is
    given no steps), that layer's pruning is the result, not 0 %."""
    from onnxshrink.pruning import allocation

    monkeypatch.setattr(allocation, "SEARCH_STEPS", 0)
    result = prune_model(small_net(), PruneOptions(min_cosine=0.9999, min_size=64), calib=calib(64),
                         eval_data=calib(64))
    assert result.modified
    assert [(s["single_layer"], s["sparsity"] > 0) for s in result.report.search] == [(True, True)]
    assert sorted(t.target_sparsity for t in result.report.tensors).count(0.25) == 1
    assert result.report.validation.passed
