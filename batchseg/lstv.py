"""LSTV findings from the ordered sequence: only what the image supports (docs/architecture.md, "Domain facts").

Counting lumbar vertebrae needs both junctions in view: a thoracic vertebra
(T-label or T13) directly above the first lumbar one, and the sacrum directly
below the last. The count is given only then, with labels from the labeling
model and nothing irregular (gaps, duplicated labels, an order that contradicts
the names); otherwise `count_reason` says why not, naming the structure in view.

Evidence the labels can carry: L6 (25) or T13 (28) present, T11 directly above
L1 (T12 skipped), L4 directly above the sacrum, a disc inside the sacrum. These
are candidates for review, never diagnoses. Label 126 is SPINEPS's "disc above
the top vertebra" and is never read as sacralization.

`caveats` are findings that change how the result must be read (not assessable,
split or duplicated labels, a label out of order, a volume far from the study's
median); `notes` are informational (label 126 present, a structure cut by the
edge of the field of view).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .enumeration import SpineSequence
from .labels import (DISC_ABOVE_TOP, DISC_OFFSET, L1, L4, L5, L6, LUMBAR, SACRUM, SPINE_ORDER, T11, T12, T13,
                     THORACIC, TRANSITIONAL, VERTEBRA_NAMES)

if TYPE_CHECKING:
    from .structures import Structure

# A label's volume this many times the study's median for its kind (vertebra, disc), or this fraction of it.
VOLUME_HIGH = 2.5
VOLUME_LOW = 0.25
# Steps down the spine that are no gap: the common ones, the transitional ones, and the two patterns.
_PATTERN_STEPS = {(T11, L1), (L4, SACRUM)}


@dataclass
class LstvFindings:
    """Lumbosacral transitional vertebra evidence, as candidates for review (not diagnoses)."""

    count_assessable: bool
    count_reason: str | None              # why not assessable; None when it is
    lumbar_count: int | None              # only when count_assessable
    pattern: str                          # one of findings_words.PATTERNS
    candidates: list[dict] = field(default_factory=list)    # {"pattern", "evidence"}
    caveats: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    split_labels: list[dict] = field(default_factory=list)  # labels in several 26-connected pieces
    sequence: list[str] = field(default_factory=list)       # names top to bottom: vertebrae, sacrum, discs
    thoracolumbar_junction_in_view: bool = False
    lumbosacral_junction_in_view: bool = False
    l6_present: bool | None = False       # None: labels not anatomical, so unknown
    t13_present: bool | None = False
    labels_anatomical: bool = True
    caveat_labels: list[int] = field(default_factory=list)  # labels a caveat names (marked on the QC picture)

    def to_json(self) -> dict:
        return asdict(self)


def assess(sequence: SpineSequence, structures: Sequence[Structure], *,
           sacrum_top_mm: float | None = None) -> LstvFindings:
    """The findings of one label map, from its sequence and its measured structures.

    `sacrum_top_mm`: the sacrum's topmost voxel along the sequence's main axis
    (same origin as `position_mm`); it tells a disc inside the sacrum from one above it.
    """
    anatomical = sequence.labels_anatomical
    by_label = {s.instance_id: s for s in structures}
    caveats: list[str] = []
    notes: list[str] = []
    flagged: list[int] = []
    irregular: list[str] = []
    candidates: list[dict] = []

    def caveat(text: str, *labels: int) -> None:
        caveats.append(text)
        flagged.extend(v for v in labels if v not in flagged)

    split_labels, disc_in_sacrum = _split_findings(sequence, structures, sacrum_top_mm, caveat, irregular)
    _volume_findings(sequence, structures, caveat, notes, split_labels)
    if DISC_ABOVE_TOP in by_label:
        top = sequence.label_names.get(DISC_ABOVE_TOP, "")
        notes.append(f"label 126 present ({top}): SPINEPS's class for a disc above the top vertebra, not an S1-S2 "
                     "disc, never read as sacralization")

    verts = sequence.vertebral
    vlabels = [e.label for e in verts]
    l6, t13 = L6 in vlabels, T13 in vlabels
    if not anatomical:
        _order_findings(sequence, caveat, irregular, anatomical=False)
        reason = "labels not anatomical: no labeling model, vertebrae are only numbered top to bottom"
        caveats.insert(0, f"lumbar count not assessable: {reason}")
        # Unlabelled numbers say nothing about L6 or T13: unknown (null), never "absent".
        return _findings(False, reason, None, "not_assessable", [], caveats, notes, split_labels, sequence,
                         False, False, None, None, flagged)

    _order_findings(sequence, caveat, irregular, anatomical=True)
    tl, ls, junction_reason = _junctions(verts)
    lumbar = [e for e in verts if e.label in LUMBAR]

    # Candidates: evidence in the labels, whatever the field of view (then the count cannot confirm it).
    unconfirmed = "" if (tl and ls) else f", but the count cannot confirm it ({junction_reason})"
    if l6:
        candidates.append({"pattern": "lumbarization",
                           "evidence": f"L6 (label 25) present: a sixth lumbar-type vertebra{unconfirmed}"})
    if disc_in_sacrum:
        candidates.append({"pattern": "lumbarization", "evidence": disc_in_sacrum})
    if t13:
        candidates.append({"pattern": "thoracolumbar_t13",
                           "evidence": "T13 (label 28) present: a thirteenth thoracic-type vertebra by the labeling "
                                       "model (the thoracic count itself is not in view)" + unconfirmed})
    eleven = T12 not in vlabels and any(a.label == T11 and b.label == L1 for a, b in zip(verts, verts[1:]))
    if eleven:
        candidates.append({"pattern": "eleven_thoracic",
                           "evidence": "T12 absent: T11 lies directly above L1 (the labeling model skipped T12), "
                                       "11 thoracic vertebrae by its labels or a miscount" + unconfirmed})
    four = L5 not in vlabels and any(a.label == L4 and b.label == SACRUM for a, b in zip(verts, verts[1:]))
    if four:
        candidates.append({"pattern": "four_lumbar",
                           "evidence": "L5 absent: L4 lies directly above the sacrum (sacralization of L5, or a "
                                       "miscount)" + unconfirmed})

    if not (tl and ls):
        reason = junction_reason
        caveats.insert(0, f"lumbar count not assessable: {reason}")
        pattern = "not_assessable"
    elif irregular:
        reason = f"labels irregular: {irregular[0]}"
        pattern = "irregular"
    else:
        reason = None
        pattern = next((c["pattern"] for c in candidates), "normal")
    count = len(lumbar) if reason is None else None
    return _findings(reason is None, reason, count, pattern, candidates, caveats, notes, split_labels, sequence,
                     tl, ls, l6, t13, flagged)


def _findings(assessable: bool, reason: str | None, count: int | None, pattern: str, candidates: list[dict],
              caveats: list[str], notes: list[str], split_labels: list[dict], sequence: SpineSequence, tl: bool,
              ls: bool, l6: bool | None, t13: bool | None, flagged: list[int]) -> LstvFindings:
    return LstvFindings(
        count_assessable=assessable, count_reason=reason, lumbar_count=count, pattern=pattern,
        candidates=candidates, caveats=caveats, notes=notes, split_labels=split_labels, sequence=sequence.names,
        thoracolumbar_junction_in_view=tl, lumbosacral_junction_in_view=ls, l6_present=l6, t13_present=t13,
        labels_anatomical=sequence.labels_anatomical, caveat_labels=sorted(flagged))


def _junctions(verts: list) -> tuple[bool, bool, str | None]:
    """(thoracolumbar junction in view, lumbosacral junction in view, why not: one line or None)."""
    if not verts:
        return False, False, "no vertebra in the label map"
    lumbar = [n for n, e in enumerate(verts) if e.label in LUMBAR]
    if not lumbar:
        return False, False, (f"no lumbar vertebra in view: vertebrae {verts[0].name} to {verts[-1].name}"
                              if len(verts) > 1 else f"no lumbar vertebra in view: only {verts[0].name}")
    first, last = lumbar[0], lumbar[-1]
    tl = first > 0 and verts[first - 1].label in THORACIC
    ls = last < len(verts) - 1 and verts[last + 1].label == SACRUM
    why = []
    if not tl:
        why.append(f"thoracolumbar junction (T12/L1) not in view: top vertebra {verts[0].name}" if first == 0 else
                   f"no thoracic vertebra directly above {verts[first].name} ({verts[first - 1].name} is)")
    if not ls:
        why.append(f"lumbosacral junction (L5/S1) not in view: bottom vertebra {verts[-1].name}, no sacrum below"
                   if last == len(verts) - 1 else
                   f"no sacrum directly below {verts[last].name} ({verts[last + 1].name} is)")
    return tl, ls, " and ".join(why) or None


def _rank(label: int) -> int:
    return SPINE_ORDER.index(label)


def _expected_next(label: int) -> set[int]:
    """Vertebral labels that may follow `label` going down without a gap."""
    if label == SACRUM:
        return set()
    after = SPINE_ORDER[_rank(label) + 1:]
    nxt = {next(v for v in after if v not in TRANSITIONAL)} if any(v not in TRANSITIONAL for v in after) else set()
    if label == T12:
        nxt.add(T13)
    if label == L5:
        nxt.add(L6)
    if label in TRANSITIONAL:
        nxt = {L1} if label == T13 else {SACRUM}
    return nxt | {b for a, b in _PATTERN_STEPS if a == label}


def _order_findings(sequence: SpineSequence, caveat, irregular: list[str], *, anatomical: bool) -> None:
    """Gaps and order contradictions between neighbouring vertebrae; discs whose label contradicts their place."""
    verts = sequence.vertebral
    for a, b in zip(verts, verts[1:]):
        if a.label == b.label:
            continue            # a duplicated label: reported with the split labels
        if not anatomical:
            if a.label > b.label and b.label != SACRUM:
                text = f"label out of order: {b.name} ({b.label}) lies below {a.name} ({a.label})"
                caveat(text, a.label, b.label)
                irregular.append(text)
            continue
        if _rank(b.label) < _rank(a.label):
            text = f"label out of order: {b.name} lies below {a.name}"
            caveat(text, a.label, b.label)
            irregular.append(text)
        elif b.label not in _expected_next(a.label):
            missing = [VERTEBRA_NAMES[v] for v in SPINE_ORDER[_rank(a.label) + 1:_rank(b.label)]
                       if v not in TRANSITIONAL]
            text = f"gap: {', '.join(missing) or 'a vertebra'} missing between {a.name} and {b.name}"
            caveat(text, a.label, b.label)
            irregular.append(text)
    if not anatomical:
        return
    top = verts[0].label if verts else None
    for n, e in enumerate(sequence.entries):
        if e.kind != "disc" or e.piece is not None:
            continue            # pieces of a split disc: reported with the split labels
        above, below = sequence.neighbours(n)
        if above is not None:
            ok = e.label == DISC_OFFSET + above.label
        else:
            # SPINEPS: 126 with the sacrum in view, else the top vertebra's label - 1.
            ok = e.label == DISC_ABOVE_TOP or (top is not None and e.label == DISC_OFFSET + top - 1)
        if not ok:
            where = f"between {above.name} and {below.name}" if above and below else e.name
            text = f"disc label {e.label} lies {where}: the label contradicts its place"
            caveat(text, e.label)
            irregular.append(text)


def _split_findings(sequence: SpineSequence, structures: Sequence[Structure], sacrum_top_mm: float | None,
                    caveat, irregular: list[str]) -> tuple[list[dict], str | None]:
    """Labels in several pieces: duplicates, a disc inside the sacrum, fragments. Returns (split_labels, evidence)."""
    split: list[dict] = []
    disc_in_sacrum = None
    for s in structures:
        if s.components <= 1 or s.kind not in ("vertebra", "sacrum", "disc"):
            continue            # endplate labels hold the endplates on both sides of a disc: two pieces by design
        name = sequence.label_names.get(s.instance_id, str(s.instance_id))
        entries = [e for e in sequence.entries if e.label == s.instance_id]
        sized = {e.piece for e in entries}
        fragments = [p for n, p in enumerate(s.pieces) if n not in sized]
        pieces = [{"volume_voxels": p.volume_voxels, "centroid_voxel": list(p.centroid_voxel),
                   "centroid_world": list(p.centroid_world), "fragment": n not in sized}
                  for n, p in enumerate(s.pieces)]
        reading = "fragments"
        if len(entries) > 1:
            span = entries[-1].position_mm - entries[0].position_mm
            inside = [e for e in entries if s.kind == "disc" and sacrum_top_mm is not None
                      and e.position_mm > sacrum_top_mm]
            if inside:
                reading = "disc inside the sacrum"
                depth = inside[0].position_mm - sacrum_top_mm
                text = (f"{name} ({s.instance_id}) in {s.components} pieces: one lies inside the sacrum, "
                        f"{depth:.0f} mm below its top (a disc inside the sacrum merged into {s.instance_id})")
                disc_in_sacrum = (f"a disc inside the sacrum ({depth:.0f} mm below its top), merged into label "
                                  f"{s.instance_id}: an S1-S2 disc, so S1 may be a lumbar-type (transitional) segment")
            else:
                reading = "duplicate"
                kind = "disc" if s.kind == "disc" else "vertebra"
                text = (f"{name} ({s.instance_id}) appears {len(entries)} times: {len(entries)} separate "
                        f"{kind}-sized pieces carry the label, {span:.0f} mm apart along the spine")
            caveat(text, s.instance_id)
            irregular.append(text)
        else:
            vox = sum(p.volume_voxels for p in fragments)
            caveat(f"{name} ({s.instance_id}) in {s.components} pieces: {len(fragments)} fragment"
                   f"{'s' if len(fragments) > 1 else ''} ({vox} voxels) apart from the main piece", s.instance_id)
        split.append({"label": s.instance_id, "name": name, "components": s.components, "reading": reading,
                      "pieces": pieces})
    return split, disc_in_sacrum


def _volume_findings(sequence: SpineSequence, structures: Sequence[Structure], caveat, notes: list[str],
                     split: list[dict]) -> None:
    """Vertebrae and discs far from the study's own median volume for their kind."""
    duplicated = {d["label"] for d in split if d["reading"] != "fragments"}
    for kind in ("vertebra", "disc"):
        mine = [s for s in structures if s.kind == kind]
        if len(mine) < 3:
            continue            # no meaningful median
        entries = [e for e in sequence.entries if e.kind == kind]
        ends = {entries[0].label, entries[-1].label} if entries else set()
        median = float(np.median([s.volume_voxels for s in mine]))
        for s in mine:
            if s.instance_id in duplicated:
                continue
            ratio = s.volume_voxels / median
            name = sequence.label_names.get(s.instance_id, str(s.instance_id))
            if ratio > VOLUME_HIGH:
                caveat(f"{name} ({s.instance_id}): volume {ratio:.1f}x the study's median {kind} "
                       "(merged structures or a mislabel?)", s.instance_id)
            elif ratio < VOLUME_LOW:
                if s.instance_id in ends:
                    where = "top" if s.instance_id == entries[0].label else "bottom"
                    notes.append(f"{name} ({s.instance_id}) at the {where} of the field of view: volume {ratio:.2f}x "
                                 f"the study's median {kind} (cut by the image edge?)")
                else:
                    caveat(f"{name} ({s.instance_id}): volume {ratio:.2f}x the study's median {kind} "
                           "(under-segmented or a fragment?)", s.instance_id)
