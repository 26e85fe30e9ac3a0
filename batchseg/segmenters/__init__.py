"""Segmenters: what turns one sagittal T2w NIfTI into SPINEPS-style label maps.

A worker creates its segmenter once (`load_segmenter`) and calls `segment` for
every study it claims, so model loading is paid once per process.

This face holds the registry (`SEGMENTERS`, `load_segmenter`) and passes on the protocol and
its result type from `protocol.py`; `names.py` lists the names a project may choose; each
segmenter lives in its own module and is imported only when it is built.
"""
from __future__ import annotations

from typing import Any, Callable

from ..errors import StudyError
from .protocol import SegmentResult, Segmenter


def _reference(options: dict[str, Any]) -> Segmenter:
    from .reference import ReferenceSegmenter

    return ReferenceSegmenter(**options)


def _noop(options: dict[str, Any]) -> Segmenter:
    from .noop import NoopSegmenter

    return NoopSegmenter(**options)


def _spineps(options: dict[str, Any]) -> Segmenter:
    from .spineps import SpinepsSegmenter

    return SpinepsSegmenter(**options)


# One entry per name in names.SEGMENTER_NAMES, in its order (tests/test_config.py holds them equal).
SEGMENTERS: dict[str, Callable[[dict[str, Any]], Segmenter]] = {
    "reference": _reference,
    "noop": _noop,
    "spineps": _spineps,
}


def load_segmenter(name: str, options: dict[str, Any] | None = None) -> Segmenter:
    try:
        factory = SEGMENTERS[name]
    except KeyError:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}") from None
    return factory(dict(options or {}))


__all__ = ["SegmentResult", "Segmenter", "StudyError", "load_segmenter", "SEGMENTERS"]
