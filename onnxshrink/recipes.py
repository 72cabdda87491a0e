"""Shrink recipes: TOML files whose sections mirror the stage commands' options.

A recipe has the sections ``[simplify]``, ``[prune]``, ``[quantize]``, ``[pack]``
(each with ``enabled``; ``[pack]`` also takes ``float16_small``: small float
tensors stored as float16 when the gate still holds), ``[gate]`` (``max_accuracy_drop`` or
``min_cosine``, and ``max_latency_ratio``) and ``[search]`` (``max_latency_ratio``: the
output's latency over the original's, 1 thread, batch 1; in either table, not both). Keys inside ``[prune]`` and ``[quantize]`` are the fields of
:class:`PruneOptions` and :class:`QuantizeOptions` (the same names as the
``prune``/``quantize`` flags, with ``_`` for ``-``). Recipes for common cases
ship in ``onnxshrink/recipes/``; ``load_recipe`` takes one of their names or a
path.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from onnxshrink.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SECTIONS = ("simplify", "prune", "quantize", "pack", "gate", "search")
GATE_KEYS = ("max_accuracy_drop", "min_cosine")
# Objectives of the search beside the quality gate, allowed under [gate] or [search].
SEARCH_KEYS = ("max_latency_ratio",)
# Set by the pipeline itself (the search), never by a recipe.
PIPELINE_OWNED = {"prune": ("max_accuracy_drop", "min_cosine", "simplify"),
                  "quantize": ("max_accuracy_drop", "min_cosine")}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A parsed recipe: which stages run, their options, and the gate."""

    name: str
    description: str
    simplify: bool
    prune: dict[str, Any] | None
    quantize: dict[str, Any] | None
    pack: bool
    gate: dict[str, float]
    # Store small float tensors (biases, norms, positional embeddings) as float16
    # in the container when the final model still passes the gate that way.
    pack_float16_small: bool = False
    # The output's largest latency over the original's (1 thread, batch 1, default load form).
    max_latency_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def builtin_recipes() -> dict[str, Path]:
    """Name -> path of every recipe that ships with onnxshrink."""
    folder = resources.files("onnxshrink") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def _option_fields(section: str) -> set[str]:
    if section == "prune":
        from onnxshrink.pruning.options import PruneOptions as options_class
    else:
        from onnxshrink.quantization.options import QuantizeOptions as options_class
    return {f.name for f in dataclasses.fields(options_class)} - set(PIPELINE_OWNED[section])


def parse_recipe(data: dict[str, Any], name: str) -> Recipe:
    """Check a recipe's tables and keys; unknown ones are refused by name."""
    unknown = set(data) - set(SECTIONS) - {"description"}
    if unknown:
        raise UsageError(f"recipe {name}: unknown section '{sorted(unknown)[0]}' (sections: {', '.join(SECTIONS)})")
    stages: dict[str, Any] = {}
    for section in ("prune", "quantize"):
        table = dict(data.get(section, {}))
        enabled = table.pop("enabled", section in data)
        allowed = _option_fields(section)
        bad = sorted(set(table) - allowed)
        if bad:
            raise UsageError(f"recipe {name}: [{section}] has no option '{bad[0]}' (options: {', '.join(sorted(allowed))})")
        for key, value in table.items():
            if isinstance(value, list):
                table[key] = tuple(value)
        stages[section] = table if enabled else None
    for section, keys in (("simplify", {"enabled"}), ("pack", {"enabled", "float16_small"})):
        table = dict(data.get(section, {}))
        extra = sorted(set(table) - keys)
        if extra:
            raise UsageError(f"recipe {name}: [{section}] takes only {', '.join(sorted(keys))}, not '{extra[0]}'")
        stages[section] = bool(table.get("enabled", True))
    pack_float16_small = bool(dict(data.get("pack", {})).get("float16_small", False))
    gate = dict(data.get("gate", {}))
    bad = sorted(set(gate) - set(GATE_KEYS) - set(SEARCH_KEYS))
    if bad:
        raise UsageError(f"recipe {name}: [gate] has no key '{bad[0]}' (keys: {', '.join(GATE_KEYS + SEARCH_KEYS)})")
    search = dict(data.get("search", {}))
    bad = sorted(set(search) - set(SEARCH_KEYS))
    if bad:
        raise UsageError(f"recipe {name}: [search] has no key '{bad[0]}' (keys: {', '.join(SEARCH_KEYS)})")
    both = sorted(set(search) & set(gate))
    if both:
        raise UsageError(f"recipe {name}: '{both[0]}' is under both [gate] and [search]; give it once")
    objectives = {k: gate.pop(k) for k in SEARCH_KEYS if k in gate} | search
    latency = objectives.get("max_latency_ratio")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency <= 0):
        raise UsageError(f"recipe {name}: max_latency_ratio must be a number above 0, got {latency!r}")
    return Recipe(name, str(data.get("description", "")), stages["simplify"], stages["prune"], stages["quantize"],
                  stages["pack"], {k: float(v) for k, v in gate.items()}, pack_float16_small,
                  None if latency is None else float(latency))


def recipe_for(model: Any) -> str:
    """The built-in recipe that suits ``model``: cnn-default with convolutions, else transformer-default."""
    ops = {n.op_type for n in model.graph.node}
    return "cnn-default" if ops & {"Conv", "ConvTranspose"} else "transformer-default"


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """A built-in recipe by name, or a recipe file by path."""
    builtins = builtin_recipes()
    key = str(name_or_path)
    path = builtins.get(key, Path(key))
    if not path.is_file():
        raise UsageError(f"no recipe '{key}': give a .toml file or one of {', '.join(sorted(builtins))}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"recipe {path}: not valid TOML ({e})") from None
    return parse_recipe(data, key if key in builtins else str(path))
