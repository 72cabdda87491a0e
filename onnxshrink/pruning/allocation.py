"""Per-layer sparsity search under an accuracy or cosine target (being written)."""

from onnxshrink.errors import UsageError


def search_sparsity(*args, **kwargs):
    raise UsageError("a sparsity target is not supported yet; give --sparsity")
