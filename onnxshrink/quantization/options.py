"""What a quantization run may be told: one frozen dataclass, defaults in one place."""

from __future__ import annotations

import dataclasses

from onnxshrink.cpu_targets import DEFAULT_TARGET, check_target
from onnxshrink.errors import UsageError

METHODS = ("minmax", "percentile", "entropy", "mse")
ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_ROUNDINGS = ("auto", "gptq", "nearest")
# "auto" rounds by GPTQ up to this many bytes of weights, to nearest above: the Hessian pass
# costs another pass over the data and ~0.7x the weights in peak memory (123 MB test model:
# 3.2x the weights with GPTQ, 2.5x nearest); --weight-rounding gptq asks for it anyway.
GPTQ_AUTO_MAX_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    """Options of :func:`onnxshrink.quantization.quantize_model`.

    ``method`` picks how each activation's range is read from its calibration
    statistics; ``percentile`` is used by the percentile method. Weights are
    always int8, symmetric (zero point 0), per output channel unless
    ``per_channel`` is False; the weights of ``per_tensor_ops`` (op types) get
    one scale each even so (onnxruntime's QGemm requantizes a row of outputs
    faster with one weight scale: digits_mlp 0.96x fp32 against 1.12x per
    channel at batch 1 here, see docs/speed.md). ``activations`` is the 8-bit type of activations
    (uint8 is asymmetric with a free zero point, int8 likewise in [-128, 127]).
    ``exclude_nodes``/``exclude_ops`` stay in float. ``min_cosine`` or
    ``max_accuracy_drop`` (points: against the eval data's labels, or without
    labels the share of the original's answers that change) turn on the
    accuracy-aware search, which keeps the most sensitive nodes in float until
    the target holds; ``min_agreement`` (a fraction) is the label-free
    target: every output keeps at least that share of the original's answers
    (per output kind, see :mod:`onnxshrink.validation.kinds`). Without a target, ``gate_floor`` checks the result on
    the eval (else calibration) data against
    :data:`onnxshrink.validation.DEFAULT_FLOOR` and refuses one that fails it
    (GateFailed). ``state`` names a stateful model's (output, input) pairs
    when their names do not say so (checks then run in a closed loop). ``dynamic`` does weight-only dynamic quantization of
    MatMul/Gemm (no calibration data). ``latency_guard`` measures int8 against
    fp32 latency and puts back in float the nodes onnxruntime cannot run in
    integer kernels. ``fold_constants`` runs onnxsim first when a layer weight
    is computed at run time. ``batch_size`` is the calibration batch size.
    ``target`` is the CPU the model is written for
    (:mod:`onnxshrink.cpu_targets`): ``x86-avx2``, the default, runs exactly on
    every CPU, so int8 weight codes stay within [-64, 64] (x86 without VNNI adds
    two u8 x s8 products in a saturating int16); ``x86-vnni`` and ``arm`` allow
    the full [-127, 127], for models that will run only there (static and
    dynamic weights alike). ``weight_range_bits`` below 8 keeps int8 weights
    (static) but uses only the codes of a narrower symmetric range (6:
    [-31, 31]): the model still runs in int8 kernels, and its weights pack
    smaller. ``shapes`` fills symbolic input dims
    of the random inputs the final check uses when there is no data to run
    (``--dynamic`` without ``--eval``), as ``((name, (dim, ...)), ...)``.
    ``bias_correction`` lowers each Conv/Gemm bias by the mean output shift its
    weight rounding causes on the calibration data (see
    :mod:`onnxshrink.quantization.bias_correction`). ``weight_rounding`` is how
    static int8 weights get their codes: ``gptq`` (the default) spreads each
    rounding error over the layer's other inputs through the inverse Hessian of
    its calibration inputs, on the same scales and code bound
    (:mod:`onnxshrink.quantization.weight_rounding`); ``nearest`` rounds each
    weight alone. Dynamic quantization has no data and always rounds to nearest.
    """

    method: str = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    per_tensor_ops: tuple[str, ...] = ()
    activations: str = "uint8"
    exclude_nodes: tuple[str, ...] = ()
    exclude_ops: tuple[str, ...] = ()
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    dynamic: bool = False
    latency_guard: bool = True
    fold_constants: bool = True
    batch_size: int = 32
    weight_range_bits: int = 8
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    bias_correction: bool = True
    target: str = DEFAULT_TARGET
    gate_floor: bool = True
    state: tuple[tuple[str, str], ...] = ()
    weight_rounding: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"--method must be one of {', '.join(METHODS)}, got '{self.method}'")
        if self.activations not in ACTIVATION_TYPES:
            raise UsageError(f"--activations must be uint8 or int8, got '{self.activations}'")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"--percentile must lie in (50, 100], got {self.percentile}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError(f"--min-cosine must lie in [-1, 1], got {self.min_cosine}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise UsageError(f"--max-accuracy-drop is in points and must lie in [0, 100], got {self.max_accuracy_drop}")
        if sum(t is not None for t in (self.min_cosine, self.max_accuracy_drop, self.min_agreement)) > 1:
            raise UsageError("give one target: --min-cosine, --max-accuracy-drop or --min-agreement")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise UsageError(f"--min-agreement is a fraction of the original's answers in [0, 1], got {self.min_agreement}")
        if not 2 <= self.weight_range_bits <= 8:
            raise UsageError(f"--weight-range-bits must lie in 2..8 (codes within the int8 range), got {self.weight_range_bits}")
        check_target(self.target)
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise UsageError(f"--weight-rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, got '{self.weight_rounding}'")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be positive, got {self.batch_size}")
        if self.dynamic and self.accuracy_aware:
            raise UsageError("--dynamic has no calibration step; drop --min-cosine/--max-accuracy-drop/--min-agreement "
                             "or --dynamic")

    def per_channel_for(self, op_type: str) -> bool:
        """Whether the weights of an ``op_type`` node get a scale per output
        channel (``per_channel``, unless the op is one of ``per_tensor_ops``)."""
        return self.per_channel and op_type not in self.per_tensor_ops

    @property
    def accuracy_aware(self) -> bool:
        return self.min_cosine is not None or self.max_accuracy_drop is not None or self.min_agreement is not None
