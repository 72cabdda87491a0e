"""Plain weight-only int8, the floor of every lossy search: whether it runs,
when it replaces the search's winner, and what the report says when it does
not (:func:`onnxshrink.search.loop.search` runs it last)."""

from __future__ import annotations

from onnxshrink.search.budget import used
from onnxshrink.search.trial import SearchInputs, Trial

# A less accurate candidate replaces a winner only if it is this much smaller (the bolder one, the floor).
BOLDER_MIN_GAIN = 0.95
# The width of the plain weight-only candidate every lossy search is compared with.
FLOOR_BITS = 8


def wants_floor(inputs: SearchInputs) -> bool:
    """Whether the weight-only candidates apply: a recipe that quantizes to
    8-bit static int8 (mixed precision already is weight-only) with a gate,
    and no sparsity or weight code range the user fixed (they would not
    prune or quantize as asked)."""
    recipe = inputs.options.recipe
    # A sparsity or a weight code range the recipe fixes: it asked for that, not for the search's choice.
    fixed = (recipe.prune is not None and recipe.prune.get("sparsity") is not None) or \
        (recipe.quantize is not None and "weight_range_bits" in recipe.quantize)
    return recipe.quantize is not None and not inputs.options.mixed_precision and inputs.gate.active and not fixed


def floor_note(chosen: Trial, floor: Trial, gate) -> str | None:
    """What to say when the chosen model agrees less with the original than plain weight-only int8 does."""
    if floor.failed is not None or not gate.active or chosen is floor:
        return None
    mine, theirs = used(chosen.outcome.validation, gate), used(floor.outcome.validation, gate)
    if mine <= theirs + 1e-9:
        return None
    what = "accuracy points lost" if gate.max_accuracy_drop is not None else "1 - output cosine"
    return (f"the chosen model agrees less with the original than plain weight-only int8 would "
            f"({what}: {mine:.4g} vs {theirs:.4g}); weight-only int8 would be {floor.ratio:.1f}x smaller "
            f"against {chosen.ratio:.1f}x")


def floor_size_note(chosen: Trial, floor: Trial) -> str | None:
    """What to say when the chosen model is larger than plain weight-only int8,
    which was not kept (it failed the gate, or gave up accuracy for too little)."""
    if floor.failed is not None or chosen is floor or chosen.outcome.size <= floor.outcome.size:
        return None
    why = "it fails the gate" if not floor.passed else "it agrees less with the original for too little gain"
    return (f"the search's best candidate ({chosen.ratio:.1f}x smaller, before any float16 storage) is larger than "
            f"plain weight-only int8 would be ({floor.ratio:.1f}x), which is not kept: {why}")


def prefer_floor(chosen: Trial | None, floor: Trial, gate) -> bool:
    """Weight-only int8 replaces the recipe's winner when it passes and is
    clearly smaller (as the bolder candidate must be: static int8 that could
    quantize nothing, its layers in If/Loop bodies, stays the original's size),
    or no larger and no less accurate; or when nothing else passed."""
    if not floor.passed:
        return False
    if chosen is None:
        return True
    no_less_accurate = not gate.active or used(floor.outcome.validation, gate) <= used(chosen.outcome.validation, gate)
    return floor.outcome.size < (1.0 if no_less_accurate else BOLDER_MIN_GAIN) * chosen.outcome.size or \
        (no_less_accurate and floor.outcome.size == chosen.outcome.size)


