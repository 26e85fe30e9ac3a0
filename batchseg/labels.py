"""The one label table: SPINEPS / TPTBox numbers -> anatomical names and kinds.

Instance mask (seg-vert): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 28 T13,
26 sacrum (S1); 100+X the disc below vertebra X; 200+X the endplates next to
disc 100+X. Semantic mask (seg-spine): SEMANTIC_NAMES. See docs/architecture.md, "Domain facts".

Disc names depend on which vertebra lies below X, and that depends on the
transitional vertebrae present. Without knowledge of the mask (`present=None`)
the table assumes the common spine: 119 "T12/L1", 124 "L5/S1", and the
transitional discs 125 "L6/S1", 128 "T13/L1". Given the labels present in a
mask, `label_name` names the disc after the vertebra actually below it:
119 is "T12/T13" when T13 (28) is present, 124 is "L5/L6" when L6 (25) is
present, and a lumbar disc with the sacrum directly below it (no lower lumbar
label present) ends in "/S1" (e.g. 123 "L4/S1" in a four-lumbar spine). A
missing non-transitional vertebra is never skipped over (a segmentation that
lost L3 still calls 121 "L2/L3"), because a gap is more likely a missed
structure than an anatomical variant.

Label 126 is the model's "disc above the topmost vertebra" class, NOT an
S1-S2 disc: it gets a neutral name and no vertebra pair.
"""
from __future__ import annotations

from collections.abc import Collection

VERTEBRA_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i: f"T{i - 7}" for i in range(8, 20)},
    **{i: f"L{i - 19}" for i in range(20, 25)},
    25: "L6",
    26: "S1",
    28: "T13",
}

# Label of each vertebra name: LABELS["T10"] == 17.
LABELS: dict[str, int] = {name: label for label, name in VERTEBRA_NAMES.items()}

T12 = 19
L1 = 20
L5 = 24
L6 = 25
SACRUM = 26
T13 = 28
LUMBAR = tuple(range(L1, L6 + 1))      # L1-L5 and L6
DISC_OFFSET = 100                       # disc below vertebra X: DISC_OFFSET + X
ENDPLATE_OFFSET = 200                   # endplates next to disc 100+X: ENDPLATE_OFFSET + X
DISC_ABOVE_TOP = DISC_OFFSET + SACRUM   # 126: disc above the topmost vertebra (never S1/S2)

# Cranial -> caudal order of the vertebrae, transitional ones where they sit.
SPINE_ORDER: tuple[int, ...] = (*range(1, T12 + 1), T13, *range(L1, L5 + 1), L6, SACRUM)
# Vertebrae that exist only in some people; skipped when naming a disc unless present.
TRANSITIONAL = frozenset({T13, L6})

# seg-spine (semantic / subregion) labels that SPINEPS writes (TPTBox `Location` numbers).
SEM_SACRUM = 26
SEM_VERTEBRAL_BODY = 49
SEM_DISC = 100
SEMANTIC_NAMES: dict[int, str] = {
    SEM_SACRUM: "sacrum",
    41: "vertebral arch",
    42: "spinous process",
    43: "costal/transverse process left",
    44: "costal/transverse process right",
    45: "superior articular process left",
    46: "superior articular process right",
    47: "inferior articular process left",
    48: "inferior articular process right",
    SEM_VERTEBRAL_BODY: "vertebral body",
    52: "vertebral endplate superior",
    53: "vertebral endplate inferior",
    60: "spinal cord",
    61: "spinal canal",
    62: "endplate",
    SEM_DISC: "intervertebral disc",
}


def label_kind(label: int) -> str:
    """'vertebra' | 'sacrum' | 'disc' | 'endplate' | 'other' for a seg-vert label."""
    label = int(label)
    if label == SACRUM:
        return "sacrum"
    if label in VERTEBRA_NAMES:
        return "vertebra"
    if DISC_OFFSET < label < ENDPLATE_OFFSET and (label - DISC_OFFSET in VERTEBRA_NAMES):
        return "disc"
    if ENDPLATE_OFFSET < label < ENDPLATE_OFFSET + 100 and (label - ENDPLATE_OFFSET in VERTEBRA_NAMES):
        return "endplate"
    return "other"


def _next_below(x: int, present: Collection[int] | None) -> int | None:
    """The vertebra label caudal to vertebra `x`, or None below the sacrum."""
    if x == SACRUM:
        return None
    pos = SPINE_ORDER.index(x)
    after = SPINE_ORDER[pos + 1:]
    if present is not None:
        present = set(present)
        if x == T12 and T13 in present:
            return T13
        if x == L5 and L6 in present:
            return L6
        # A lumbar vertebra with the sacrum and no lower lumbar label: sacrum below.
        if x in LUMBAR and SACRUM in present and not any(v in present for v in LUMBAR if v > x):
            return SACRUM
    for v in after:
        if v in TRANSITIONAL:
            # Transitional vertebrae follow only themselves-by-table: 128 -> T13/L1, 125 -> L6/S1.
            continue
        return v
    return None


def disc_name(x: int, present: Collection[int] | None = None) -> str:
    """Name of disc 100+x, the disc below vertebra x."""
    if x == SACRUM:
        return f"disc above top vertebra ({DISC_ABOVE_TOP})"
    below = _next_below(x, present)
    return f"{VERTEBRA_NAMES[x]}/{VERTEBRA_NAMES[below]}"


def label_name(label: int, present: Collection[int] | None = None) -> str:
    """Anatomical name of a seg-vert label; `present` (labels in the mask) refines disc names."""
    label = int(label)
    kind = label_kind(label)
    if kind in ("vertebra", "sacrum"):
        return VERTEBRA_NAMES[label]
    if kind == "disc":
        return disc_name(label - DISC_OFFSET, present)
    if kind == "endplate":
        return f"endplate {VERTEBRA_NAMES[label - ENDPLATE_OFFSET]}"
    return f"label {label}"


def semantic_name(label: int) -> str:
    """Name of a seg-spine (semantic) label."""
    return SEMANTIC_NAMES.get(int(label), f"label {int(label)}")
