"""What packing did to each tensor: codec, sizes, bits per element and the
order-0 entropy bound, plus totals. Plain data; the CLI prints it.

The entropy bound of a tensor is the order-0 entropy of the symbols an
order-0 coder sees: for 1-byte types that is the entropy of the values
themselves; for wider types it is the sum over byte planes of each plane's
entropy (what byte-plane Huffman can approach). Run-length coding of zeros
can go below it, since it exploits zeros that come in runs and across planes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class TensorReport:
    """One tensor: ``codec`` is "inline" for tensors left in the graph as they are."""

    name: str
    where: str
    dtype: str
    shape: tuple[int, ...]
    codec: str
    bytes_before: int
    bytes_after: int
    entropy_bytes: float
    stored_as: str = ""  # "float16": a float32 tensor stored as float16 (lossy, PackOptions.float16_small)

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def bits_per_element(self) -> float:
        return 8.0 * self.bytes_after / self.elements if self.elements else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["bits_per_element"] = round(self.bits_per_element, 4)
        d["entropy_bytes"] = round(self.entropy_bytes, 1)
        return d


@dataclasses.dataclass(frozen=True)
class PackReport:
    """All packed tensors plus the container's totals, in bytes."""

    tensors: list[TensorReport]
    model_bytes: int  # the model serialised as a plain .onnx (all data inline)
    container_bytes: int  # the whole .onnxz
    header_bytes: int  # prefix + stored (compressed) header

    @property
    def packed(self) -> list[TensorReport]:
        return [t for t in self.tensors if t.codec != "inline"]

    @property
    def tensor_bytes_before(self) -> int:
        return sum(t.bytes_before for t in self.packed)

    @property
    def tensor_bytes_after(self) -> int:
        return sum(t.bytes_after for t in self.packed)

    @property
    def entropy_bytes(self) -> float:
        return sum(t.entropy_bytes for t in self.packed)

    @property
    def float16_tensors(self) -> list[str]:
        """Names of the float32 tensors stored as float16 (lossy)."""
        return [t.name for t in self.tensors if t.stored_as == "float16"]

    @property
    def codec_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.codec] = out.get(t.codec, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: per-tensor rows and totals."""
        entropy = self.entropy_bytes
        return {
            "tensors": [t.to_dict() for t in self.tensors],
            "totals": {
                "model_bytes": self.model_bytes,
                "container_bytes": self.container_bytes,
                "header_bytes": self.header_bytes,
                "tensor_bytes_before": self.tensor_bytes_before,
                "tensor_bytes_after": self.tensor_bytes_after,
                "entropy_bytes": round(entropy, 1),
                "packed_over_entropy": round(self.tensor_bytes_after / entropy, 4) if entropy else None,
                "ratio": round(self.container_bytes / self.model_bytes, 4) if self.model_bytes else None,
                "codecs": self.codec_counts,
                "float16_tensors": self.float16_tensors,
            },
        }
