"""Codec registry: ``codec_id`` -> codec class, as in numcodecs.

A new codec is one module that defines a :class:`Codec` subclass decorated
with :func:`register_codec`, imported from ``codecs/__init__.py``.
"""

from __future__ import annotations

from typing import Any

from onnxshrink.errors import PackError
from onnxshrink.packing.codecs.abc import Codec

_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` known under ``cls.codec_id``."""
    if cls.codec_id in _REGISTRY and _REGISTRY[cls.codec_id] is not cls:
        raise ValueError(f"codec id {cls.codec_id!r} registered twice")
    _REGISTRY[cls.codec_id] = cls
    return cls


def codec_ids() -> list[str]:
    """The registered codec ids, in registration order."""
    return list(_REGISTRY)


def get_codec(config: dict[str, Any]) -> Codec:
    """Build the codec a config (``{"id": ..., ...}``) describes.

    Raises PackError for an unknown id or bad parameters: configs come from
    containers, which may be corrupt or newer than this build.
    """
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise PackError("corrupt container: a codec config without an id")
    cls = _REGISTRY.get(config["id"])
    if cls is None:
        raise PackError(
            f"unknown codec '{config['id']}' (this onnxshrink knows {', '.join(_REGISTRY)}); "
            "the file needs a newer onnxshrink"
        )
    return cls.from_config(config)
