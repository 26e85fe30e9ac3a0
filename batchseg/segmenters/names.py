"""The names a project's `segmenter` key may hold.

A leaf module, so that `config` can validate the key without importing the registry in
`segmenters/__init__.py` (whose SPINEPS segmenter imports `models`, which reads `Config`).
The registry (`SEGMENTERS`) maps each of these names to its class, in this order.
"""

SEGMENTER_NAMES: tuple[str, ...] = ("reference", "noop", "spineps")
