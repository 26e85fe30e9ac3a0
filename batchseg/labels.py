"""The one label table: SPINEPS / TPTBox numbers -> names and kinds (docs/architecture.md, "Domain facts").

Instance mask (seg-vert): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 28 T13,
26 sacrum (S1); 100+X the disc SPINEPS gave to vertebra X (the body above it);
200+X the endplates on both sides of disc 100+X. Semantic mask (seg-spine):
SEMANTIC_NAMES.

This table names a label by its number alone, assuming the common spine
(119 "T12/L1", 124 "L5/S1"). What a study's label map actually shows is named
from the ordered sequence of its structures (enumeration.py): a disc after its
real neighbours (118 between T11 and L1 is "T11/L1"), so use that for a study.

Label 126 is SPINEPS's "disc above the topmost vertebra" (it gives each disc to
the nearest body above it, and with the sacrum in view the top disc has none):
it is NOT an S1-S2 disc. 226 likewise holds the endplate(s) above the top
vertebra, never an "S1 endplate".
"""
from __future__ import annotations

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

T11 = 18
T12 = 19
L1 = 20
L4 = 23
L5 = 24
L6 = 25
SACRUM = 26
T13 = 28
LUMBAR = tuple(range(L1, L6 + 1))      # L1-L5 and L6
THORACIC = (*range(8, T12 + 1), T13)    # T1-T12 and T13
DISC_OFFSET = 100                       # disc below vertebra X: DISC_OFFSET + X
ENDPLATE_OFFSET = 200                   # endplates next to disc 100+X: ENDPLATE_OFFSET + X
DISC_ABOVE_TOP = DISC_OFFSET + SACRUM   # 126: disc above the topmost vertebra (never S1/S2)

# Cranial -> caudal order of the vertebrae, transitional ones where they sit.
SPINE_ORDER: tuple[int, ...] = (*range(1, T12 + 1), T13, *range(L1, L5 + 1), L6, SACRUM)
# Vertebrae that exist only in some people; the table's disc names skip them.
TRANSITIONAL = frozenset({T13, L6})

# seg-spine (semantic / subregion) labels that SPINEPS writes (TPTBox `Location` numbers).
SEM_SACRUM = 26
SEM_VERTEBRAL_BODY = 49
SEM_VERTEBRA_CORPUS = 50                # TPTBox's corpus class; SPINEPS's ctd reads 49 as 50
# The vertebral-body classes: SPINEPS's ctd "50" point is the centre of mass of these within a vertebra label.
SEM_BODY_CLASSES = (SEM_VERTEBRAL_BODY, SEM_VERTEBRA_CORPUS)
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
    SEM_VERTEBRA_CORPUS: "vertebral body (corpus)",
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


def disc_name(x: int) -> str:
    """Table name of disc 100+x, the disc below vertebra x in the common spine (128 "T13/L1", 125 "L6/S1")."""
    if x == SACRUM:
        return "disc above the top vertebra"
    pos = SPINE_ORDER.index(x)
    # Transitional vertebrae sit below only themselves: 119 is T12/L1, not T12/T13.
    below = next((v for v in SPINE_ORDER[pos + 1:] if v not in TRANSITIONAL), None)
    return f"{VERTEBRA_NAMES[x]}/{VERTEBRA_NAMES[below]}"


def endplate_name(x: int, disc: str | None = None) -> str:
    """Name of endplate label 200+x: the endplates at disc 100+x, called `disc` (default: its table name)."""
    if x == SACRUM:
        return "endplate above the top vertebra"
    return f"endplates at the {disc or disc_name(x)} disc"


def label_name(label: int) -> str:
    """Table name of a seg-vert label (the common spine; a study's map is named by enumeration.py)."""
    label = int(label)
    kind = label_kind(label)
    if kind in ("vertebra", "sacrum"):
        return VERTEBRA_NAMES[label]
    if kind == "disc":
        return disc_name(label - DISC_OFFSET)
    if kind == "endplate":
        return endplate_name(label - ENDPLATE_OFFSET)
    return f"label {label}"


def semantic_name(label: int) -> str:
    """Name of a seg-spine (semantic) label."""
    return SEMANTIC_NAMES.get(int(label), f"label {int(label)}")
