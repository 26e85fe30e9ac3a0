"""JSON texts decoded by the hundred thousand (the report's findings digests and timings, one of each per study)."""
from __future__ import annotations

import json
from typing import Any

_scan_once = json.JSONDecoder().scan_once


def loads(text: str) -> Any:
    """json.loads(text), without its Python layers where the value fills the whole text (as json.dumps writes
    it): a fifth of a findings digest's decoding time. Anything else (bytes, whitespace around the value, extra
    data, invalid JSON) goes through json.loads itself, with its errors."""
    if text.__class__ is str:
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:   # no value at the first character: json.loads says why, or skips the whitespace
            return json.loads(text)
        if end == len(text):
            return value
    return json.loads(text)
