"""What a prune run is asked to do: one frozen dataclass, defaults in one place."""

from __future__ import annotations

import dataclasses

from onnxshrink.errors import UsageError

PATTERNS = ("unstructured", "2:4", "channel")
METHODS = ("magnitude", "wanda", "hessian")
SCOPES = ("global", "layer")


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    """Options of :func:`onnxshrink.pruning.prune_model`.

    ``sparsity`` is the fraction of weights (or, for ``pattern="channel"``, of
    prunable channels) to remove; with a target (``max_accuracy_drop`` or
    ``min_cosine``) it is the most the search may reach (default: as high as
    the target allows). ``method=None`` picks ``hessian`` when calibration
    data is given and ``magnitude`` otherwise. ``scope="layer"`` gives every
    layer the same sparsity; ``"global"`` ranks ``|w|`` across layers to set each
    layer's share, which the method then prunes its own way. ``exclude`` holds weight or node names (shell patterns allowed).
    ``state`` names a stateful model's (output, input) pairs when their names
    do not say so; the target is then measured in a closed loop (see
    :mod:`onnxshrink.validation.stateful`).
    """

    sparsity: float | None = None
    pattern: str = "unstructured"
    method: str | None = None
    scope: str = "global"
    exclude: tuple[str, ...] = ()
    min_size: int = 256
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    include_recurrent: bool = False
    simplify: bool = False
    damp: float = 0.01
    block_size: int = 128
    reconstruct: bool = True
    channel_multiple: int = 1
    calib_samples: int = 512
    batch_size: int = 32
    state: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise UsageError(f"--pattern must be one of {', '.join(PATTERNS)}, got '{self.pattern}'")
        if self.method is not None and self.method not in METHODS:
            raise UsageError(f"--method must be one of {', '.join(METHODS)}, got '{self.method}'")
        if self.scope not in SCOPES:
            raise UsageError(f"--scope must be one of {', '.join(SCOPES)}, got '{self.scope}'")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"--sparsity is a fraction in [0, 1), got {self.sparsity}")
        if self.sparsity is None and not self.has_target:
            raise UsageError("give --sparsity, or a target (--max-accuracy-drop with --eval, or --min-cosine) to search for it")
        if self.max_accuracy_drop is not None and self.min_cosine is not None:
            raise UsageError("give one target: --max-accuracy-drop or --min-cosine, not both")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise UsageError(f"--max-accuracy-drop is in points and must lie in [0, 100], got {self.max_accuracy_drop}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError(f"--min-cosine must lie in [-1, 1], got {self.min_cosine}")
        if self.min_size < 0:
            raise UsageError(f"--min-size must be >= 0, got {self.min_size}")
        if not 0.0 < self.damp < 1.0:
            raise UsageError(f"--damp is a fraction of the mean Hessian diagonal in (0, 1), got {self.damp}")
        for name in ("block_size", "channel_multiple", "calib_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")

    @property
    def has_target(self) -> bool:
        return self.max_accuracy_drop is not None or self.min_cosine is not None

    def resolved_method(self, has_calib: bool) -> str:
        """The method that runs: the one asked for, or the best the data allows."""
        if self.method is not None:
            return self.method
        return "hessian" if has_calib else "magnitude"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exclude"] = list(self.exclude)
        return d
