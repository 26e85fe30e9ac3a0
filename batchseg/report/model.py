"""The review report's model (`batchseg report`): read the ledger and each done study's files, build a `Report`.

Three steps, I/O only at the first: `collect_report` reads the ledger once (summary, studies,
history) and each done study's metadata and vertebra labels, one file at a time; the pure
`study_entry` and `build_report` turn those into a `Report`; `report_json` is its `--json` form.
The page and the table are drawn from a `Report` by `html_page` and `csv_rows`.

LSTV findings are candidates for review, never diagnoses. A study whose lumbar count
is not assessable (a junction out of view, labels not anatomical, irregular labels) is
"not assessable", never "no candidate"; label 126 (the disc above the topmost vertebra)
is never read as an S1-S2 disc or as sacralization. "With caveats" holds only studies
whose findings carry a caveat (lstv.py: caveats apart from informational notes).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StudyError, one_line
from ..pipeline import output_paths
from .status_text import worker_of

# The names of one study's outputs (nifti, vert_mask, ..., metadata), in the pipeline's order.
OUTPUT_NAMES = tuple(output_paths(Path("."), "0"))

# LSTV status words: "no candidate" is the only one that means "counted and nothing found".
CANDIDATE, NO_CANDIDATE, NOT_ASSESSABLE, UNKNOWN = "candidate", "no candidate", "not assessable", "unknown"


@dataclass
class StudyFiles:
    """What the report needs from one done study's files (the rest of the metadata is dropped at once)."""

    metadata_path: str | None = None
    segmenter: dict[str, Any] = field(default_factory=dict)   # name, note, labels_anatomical, ...
    lstv: dict[str, Any] | None = None
    seconds: float | None = None
    batchseg_version: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)     # output name -> absolute path
    vertebra_labels: dict[str, str] | None = None
    levels: dict[str, Any] | None = None                       # the level check (None: not in the metadata)
    problems: list[str] = field(default_factory=list)


@dataclass
class LevelView:
    """One study's level check as the report shows it (levels.py); every number is checked for its type."""

    verdict: str                          # agree | shifted | disagree | not_available | not_checked
    points: int | None = None             # annotated points on the study's series
    matched: int | None = None            # at a disc of the annotated name
    shift: int | None = None              # -1 | +1 | None (levels.DEFINITIONS)
    max_distance_mm: float | None = None  # largest long-axis distance, mm
    reason: str | None = None
    disagreements: list[str] = field(default_factory=list)   # "L5/S1: SPINEPS L4/L5, 1.2 mm along the spine"


@dataclass
class LstvView:
    """One study's LSTV findings as the report shows them; None means unknown, never False."""

    status: str                       # candidate | no candidate | not assessable | unknown
    pattern: str | None = None        # lstv.PATTERNS
    count_assessable: bool | None = None
    count_reason: str | None = None
    lumbar_count: int | None = None   # only when the count is assessable
    l6_present: bool | None = None
    t13_present: bool | None = None
    candidates: list[str] = field(default_factory=list)          # "pattern: evidence"
    candidate_patterns: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class StudyEntry:
    study_id: str
    series_id: str | None
    state: str
    attempts: int
    error_class: str | None = None
    error_message: str | None = None
    log_path: str | None = None
    seconds: float | None = None            # pipeline seconds of the done attempt
    attempt_seconds: float | None = None    # claim-to-outcome seconds of every attempt (history)
    attempt_errors: list[str] = field(default_factory=list)   # classes of every failed or lost attempt, in order
    worker: str = ""                        # who made the last claim
    segmenter: str | None = None
    segmenter_note: str | None = None
    made_by: str | None = None              # the batchseg version that wrote the outputs
    labels_anatomical: bool | None = None
    lstv: LstvView | None = None            # None: the study is not done
    levels: LevelView | None = None         # None: the study is not done
    vertebrae: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class ErrorGroup:
    error_class: str
    description: str
    retried: bool
    count: int
    studies: list[str]
    example: str
    log: str | None


@dataclass
class Report:
    project: str
    results: str
    ledger: str                             # the URL, password hidden
    generated_at: str                       # ISO 8601 with the local offset
    batchseg_version: str
    total: int
    states: dict[str, int]
    attempts: int
    retried_studies: int
    throughput_per_hour: float | None
    eta_seconds: float | None
    median_study_seconds: float | None
    failures: list[ErrorGroup]
    skipped: list[ErrorGroup]
    studies: list[StudyEntry]
    segmenters: dict[str, str] = field(default_factory=dict)   # name -> its note (e.g. "synthetic phantoms only")
    result_versions: list[str] = field(default_factory=list)   # batchseg versions that wrote the results
    slurm_jobs: list[dict[str, Any]] = field(default_factory=list)

    def lstv_counts(self) -> dict[str, int]:
        counts = {CANDIDATE: 0, NO_CANDIDATE: 0, NOT_ASSESSABLE: 0, UNKNOWN: 0}
        for s in self.studies:
            if s.lstv is not None:
                counts[s.lstv.status] += 1
        return counts

    def candidate_kinds(self) -> dict[str, int]:
        """How many studies carry each candidate pattern (a study may carry several)."""
        kinds: dict[str, int] = {}
        for s in self.with_lstv(CANDIDATE):
            for c in dict.fromkeys(s.lstv.candidate_patterns if s.lstv else []):
                kinds[c] = kinds.get(c, 0) + 1
        return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))

    def level_summary(self) -> dict[str, Any]:
        """The cohort's level check: counts per verdict and the agreement rate (levels.summarize)."""
        from ..levels import summarize

        return summarize(s.levels.verdict for s in self.studies if s.levels is not None)

    def level_order(self) -> list[StudyEntry]:
        """The done studies whose levels could be checked, the disagreeing ones first (shifted, disagree, agree)."""
        rank = {"shifted": 0, "disagree": 1, "agree": 2}
        checked = [s for s in self.studies if s.levels is not None and s.levels.verdict in rank]
        return sorted(checked, key=lambda s: rank[s.levels.verdict])  # type: ignore[union-attr]

    def with_lstv(self, status: str) -> list[StudyEntry]:
        return [s for s in self.studies if s.lstv is not None and s.lstv.status == status]

    def caveats(self) -> list[StudyEntry]:
        """Counted without a candidate, but with a caveat on how to read it (a label in pieces, say)."""
        return [s for s in self.with_lstv(NO_CANDIDATE) if s.lstv and s.lstv.caveats]


# -- reading (the I/O edge) -----------------------------------------------------------------------

def read_study_files(out_dir: Path, study_id: str) -> StudyFiles:
    """Read one done study's metadata and vertebra labels; a missing or bad file becomes a problem, not a crash.

    Files are looked for where the project's `out` says, not at the paths the ledger recorded:
    a project folder that was moved or copied still reports on its own results.
    """
    files = StudyFiles()
    try:
        layout = output_paths(Path(out_dir), study_id)
    except StudyError as exc:   # a crafted ledger row: its id never becomes a path
        files.problems.append(exc.message)
        return files
    meta_path = layout["metadata"]
    meta, problem = _json_object(meta_path, "metadata", shown=str(meta_path))
    if meta is None:
        files.problems.append(problem)
        return files
    files.metadata_path = str(meta_path)
    segmenter = meta.get("segmenter")
    files.segmenter = {k: v for k, v in segmenter.items() if isinstance(v, (str, bool, int, float))} \
        if isinstance(segmenter, dict) else {}
    files.lstv = meta.get("lstv") if isinstance(meta.get("lstv"), dict) else None
    files.levels = meta.get("levels") if isinstance(meta.get("levels"), dict) else None
    timings = meta.get("timings") if isinstance(meta.get("timings"), dict) else {}
    total = timings.get("total")
    files.seconds = float(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    files.batchseg_version = versions.get("batchseg") if isinstance(versions.get("batchseg"), str) else None
    # Metadata is published last: the outputs it lists are all in place.
    names = meta.get("outputs") if isinstance(meta.get("outputs"), dict) else {}
    files.outputs = {k: str(layout[k]) for k in OUTPUT_NAMES if k in names and k in layout}
    labels, problem = _json_object(layout["vertebra_labels"], "vertebra labels")
    if labels is None:
        files.problems.append(problem)
    else:
        files.vertebra_labels = {str(k): str(v) for k, v in labels.items()}
    if files.lstv is not None:
        files.problems += lstv_field_problems(files.lstv)
    return files


# The metadata's `lstv` fields and the types the pipeline writes (lstv.LstvFindings; None is allowed).
LSTV_FIELD_TYPES = {"count_assessable": bool, "count_reason": str, "lumbar_count": int, "pattern": str,
                    "candidates": list, "caveats": list, "notes": list, "l6_present": bool, "t13_present": bool}


def lstv_field_problems(lstv: dict[str, Any]) -> list[str]:
    """A line per `lstv` field whose type is not what the pipeline writes (a hand-edited or foreign file)."""
    problems = []
    for name, kind in LSTV_FIELD_TYPES.items():
        value = lstv.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"metadata lstv.{name} is {type(value).__name__}, not {kind.__name__}: ignored")
    return problems


def _json_object(path: Path, what: str, shown: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """The JSON object in `path`, or None and a line saying what is wrong with the file."""
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return data, ""
    except FileNotFoundError:
        return None, f"{what} missing: {shown or path.name}"
    except (OSError, ValueError, TypeError, RecursionError) as exc:   # RecursionError: absurdly deep nesting
        return None, f"{what} unreadable: {path.name}: {type(exc).__name__}: {one_line(exc, 200)}"


def collect_report(config: Any, ledger: Any, *, now: float | None = None,
                   slurm_jobs: Iterable[dict[str, Any]] = ()) -> Report:
    """Read the ledger once and every done study's files one at a time, and build the report."""
    from sqlalchemy.engine import make_url

    from .. import __version__

    summary = ledger.summary()
    events_by_study: dict[str, list[dict[str, Any]]] = {}
    for event in ledger.history():
        events_by_study.setdefault(event["study_id"], []).append(event)
    out_dir = Path(config.out_dir)

    def entries() -> Iterable[StudyEntry]:
        for row in ledger.studies():
            files = read_study_files(out_dir, row["study_id"]) if row["state"] == "done" else None
            yield study_entry(row, files, events_by_study.pop(row["study_id"], []))

    try:
        ledger_url = make_url(config.db_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an odd URL still gets a report
        ledger_url = "(unparsable URL)"
    return build_report(summary, entries(), project=str(config.project_dir), results=str(out_dir),
                        ledger_url=ledger_url, version=__version__, now=now, slurm_jobs=slurm_jobs)


# -- building (pure) --------------------------------------------------------------------------------

def lstv_view(lstv: dict[str, Any] | None, labels_anatomical: bool | None) -> LstvView:
    """The report's view of a metadata `lstv` object: not assessable or unknown findings are never negatives.

    Every field is type-checked: an odd or older metadata file gives "unknown", never a crash or a negative.
    """
    from ..lstv import PATTERNS

    if lstv is None:
        if labels_anatomical is False:
            reason = "labels not anatomical: no labeling model, vertebrae are only numbered top to bottom"
            return LstvView(NOT_ASSESSABLE, pattern="not_assessable", count_assessable=False, count_reason=reason,
                            caveats=[f"lumbar count not assessable: {reason}"])
        return LstvView(UNKNOWN, notes=["no LSTV findings recorded"])
    pattern, assessable = lstv.get("pattern"), lstv.get("count_assessable")
    if pattern not in PATTERNS or not isinstance(assessable, bool):
        return LstvView(UNKNOWN, notes=["LSTV findings without a pattern and count_assessable (an older batchseg, "
                                        "without field-of-view checks): run the study again"])
    candidates, kinds = [], []
    for c in lstv.get("candidates") if isinstance(lstv.get("candidates"), list) else []:
        if isinstance(c, dict) and isinstance(c.get("pattern"), str):
            kinds.append(c["pattern"])
            candidates.append(f"{c['pattern']}: {c.get('evidence')}" if isinstance(c.get("evidence"), str)
                              else c["pattern"])
    count, reason, caveats = lstv.get("lumbar_count"), lstv.get("count_reason"), _texts(lstv.get("caveats"))
    if assessable and labels_anatomical is False:
        # The segmenter says its labels are only an order: no count made from them stands.
        assessable, pattern, candidates, kinds = False, "not_assessable", [], []
        reason = "labels not anatomical: no labeling model, vertebrae are only numbered top to bottom"
        caveats = [f"lumbar count not assessable: {reason}", *caveats]
    known = labels_anatomical is not False
    return LstvView(
        CANDIDATE if candidates else (NO_CANDIDATE if assessable else NOT_ASSESSABLE),
        pattern=pattern,
        count_assessable=assessable,
        count_reason=reason if isinstance(reason, str) and not assessable else None,
        lumbar_count=count if assessable and isinstance(count, int) and not isinstance(count, bool) else None,
        l6_present=_flag(lstv.get("l6_present")) if known else None,
        t13_present=_flag(lstv.get("t13_present")) if known else None,
        candidates=candidates,
        candidate_patterns=kinds,
        caveats=caveats,
        notes=_texts(lstv.get("notes")),
    )


def level_view(levels: dict[str, Any] | None) -> LevelView:
    """The report's view of a metadata `levels` object; outputs made before the level check are "not_checked"."""
    from ..levels import VERDICTS

    if not isinstance(levels, dict) or levels.get("verdict") not in VERDICTS:
        return LevelView("not_checked", reason="no level check in the metadata: run `batchseg levels`")
    disagreements = []
    for d in levels.get("details") if isinstance(levels.get("details"), list) else []:
        if isinstance(d, dict) and d.get("status") in ("other_level", "no_disc_here", "not_placed"):
            along = _number(d.get("distance_long_axis_mm"))
            where = (f"SPINEPS {d.get('nearest_disc')}, " + ("?" if along is None else f"{along:.1f}")
                     + " mm along the spine" if d.get("status") != "not_placed" else f"not placed: {d.get('problem')}")
            disagreements.append(f"{d.get('level')}: {where}"
                                 + (" (no disc at this level)" if d.get("status") == "no_disc_here" else ""))
    return LevelView(levels["verdict"], points=_int(levels.get("points")), matched=_int(levels.get("matched")),
                     shift=_int(levels.get("shift")), max_distance_mm=_number(levels.get("max_distance_mm")),
                     reason=levels.get("reason") if isinstance(levels.get("reason"), str) else None,
                     disagreements=disagreements)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _texts(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def ordered_vertebrae(vertebra_labels: dict[str, str] | None) -> list[str]:
    """Vertebra and sacrum names of a vertebra-labels file, top to bottom."""
    from ..labels import SPINE_ORDER, label_kind

    if not vertebra_labels:
        return []
    rank = {label: i for i, label in enumerate(SPINE_ORDER)}
    found = []
    for key, name in vertebra_labels.items():
        # isdecimal and isascii: "²" is a digit to str.isdigit, and int() refuses it
        if key.isascii() and key.isdecimal() and len(key) < 6 and label_kind(int(key)) in ("vertebra", "sacrum"):
            found.append((rank.get(int(key), len(rank) + int(key)), name))
    return [name for _, name in sorted(found)]


def _consistency(lstv: LstvView, vertebra_labels: dict[str, str] | None) -> list[str]:
    """Metadata findings that the vertebra-labels file contradicts (a half-replaced output, say)."""
    from ..labels import L6, T13

    if vertebra_labels is None or lstv.status not in (CANDIDATE, NO_CANDIDATE):
        return []
    problems = []
    for label, present, name in ((L6, lstv.l6_present, "L6"), (T13, lstv.t13_present, "T13")):
        if (str(label) in vertebra_labels) != bool(present):
            problems.append(f"metadata and vertebra labels disagree about {name}")
    return problems


def study_entry(row: dict[str, Any], files: StudyFiles | None, events: list[dict[str, Any]]) -> StudyEntry:
    """One study's line of the report from its ledger row, its files (done studies only) and its history."""
    timings = row.get("timings") if isinstance(row.get("timings"), dict) else {}
    durations = [e["duration"] for e in events if e.get("duration") is not None
                 and e["event"] in ("done", "failed", "lost", "released")]
    claims = [e for e in events if e["event"] == "claimed"]
    entry = StudyEntry(
        study_id=str(row["study_id"]),
        series_id=row.get("series_id"),
        state=row["state"],
        attempts=int(row.get("attempts") or 0),
        error_class=row.get("error_class") if row["state"] != "done" else None,
        error_message=row.get("error_message") if row["state"] != "done" else None,
        log_path=row.get("log_path") if row["state"] != "done" else None,
        seconds=timings.get("total"),
        attempt_seconds=round(sum(durations), 3) if durations else None,
        attempt_errors=[e.get("error_class") or "unknown" for e in events if e["event"] in ("failed", "lost")],
        worker=worker_of(claims[-1]) if claims else "",
    )
    if files is None:
        return entry
    entry.outputs = dict(files.outputs)
    entry.problems = list(files.problems)
    entry.segmenter = files.segmenter.get("name")
    entry.segmenter_note = files.segmenter.get("note")
    entry.made_by = files.batchseg_version if isinstance(files.batchseg_version, str) else None
    anatomical = files.segmenter.get("labels_anatomical")
    entry.labels_anatomical = anatomical if isinstance(anatomical, bool) else None
    if entry.seconds is None:
        entry.seconds = files.seconds
    if files.metadata_path is None or (files.lstv is None and entry.labels_anatomical is not False):
        entry.lstv = LstvView(UNKNOWN, notes=["metadata missing or unreadable: findings unknown"]
                              if files.metadata_path is None else ["no LSTV findings recorded"])
    else:
        entry.lstv = lstv_view(files.lstv, entry.labels_anatomical)
    entry.levels = level_view(files.levels) if files.metadata_path is not None else None
    entry.vertebrae = ordered_vertebrae(files.vertebra_labels)
    entry.problems += _consistency(entry.lstv, files.vertebra_labels)
    return entry


def _groups(groups: list[dict[str, Any]]) -> list[ErrorGroup]:
    from ..errors import ERROR_CLASSES

    out = []
    for g in groups:
        retried, description = ERROR_CLASSES.get(g["error_class"], (True, "unknown error class"))
        out.append(ErrorGroup(g["error_class"], description, retried, int(g["count"]), list(g["studies"]),
                              g.get("example") or "", g.get("log")))
    return out


def build_report(summary: dict[str, Any], entries: Iterable[StudyEntry], *, project: str, results: str,
                 ledger_url: str, version: str, now: float | None = None,
                 slurm_jobs: Iterable[dict[str, Any]] = ()) -> Report:
    """The report from the ledger summary and the study entries (consumed once, in ledger order)."""
    import datetime as dt

    studies_list = list(entries)
    segmenters: dict[str, str] = {}
    versions: set[str] = set()
    for s in studies_list:
        if s.segmenter and s.segmenter not in segmenters:
            segmenters[s.segmenter] = s.segmenter_note or ""
        if s.made_by:
            versions.add(s.made_by)
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now).astimezone()
    return Report(
        project=project,
        results=results,
        ledger=ledger_url,
        generated_at=moment.isoformat(timespec="seconds"),
        batchseg_version=version,
        total=int(summary["total"]),
        states=dict(summary["states"]),
        attempts=int(summary.get("attempts", 0)),
        retried_studies=int(summary.get("retried_studies", 0)),
        throughput_per_hour=summary.get("throughput_per_hour"),
        eta_seconds=summary.get("eta_seconds"),
        median_study_seconds=summary.get("median_study_seconds"),
        failures=_groups(summary.get("failures", [])),
        skipped=_groups(summary.get("skipped", [])),
        studies=studies_list,
        segmenters=segmenters,
        result_versions=sorted(versions),
        slurm_jobs=list(slurm_jobs),
    )



# -- the --json form ------------------------------------------------------------------------------

def report_json(report: Report) -> dict[str, Any]:
    """The report as one JSON-ready object (`batchseg report --json`)."""
    from dataclasses import asdict

    data = asdict(report)
    data["lstv_counts"] = report.lstv_counts()
    data["lstv_candidate_kinds"] = report.candidate_kinds()
    data["lstv_candidates"] = [s.study_id for s in report.with_lstv(CANDIDATE)]
    data["lstv_not_assessable"] = [s.study_id for s in report.with_lstv(NOT_ASSESSABLE)]
    data["lstv_with_caveats"] = [s.study_id for s in report.caveats()]
    data["level_check"] = {**report.level_summary(),
                           "disagreeing": [s.study_id for s in report.level_order() if s.levels
                                           and s.levels.verdict != "agree"]}
    return data


# -- GPU memory (`models check`) ---------------------------------------------------------------

@dataclass(frozen=True)
class GpuMemorySeen:
    """The most GPU memory one worker's SPINEPS pipeline held for a study, on one kind of GPU."""

    gpu: str
    peak_mb: float          # torch's reserved memory at its peak; the CUDA context comes on top
    studies: int            # how many done studies this is the maximum of


def gpu_memory_seen(config: Any, ledger: Any, last: int = 200) -> list[GpuMemorySeen]:
    """What the project's last `last` done studies recorded (segmenter gpu_peak_memory_mb), per GPU name.

    Empty when no study of this project ran SPINEPS on a GPU: the memory is then not known.
    """
    done = [row["study_id"] for row in ledger.studies("done")][-last:]
    peaks: dict[str, list[float]] = {}
    for study_id in done:
        segmenter = read_study_files(config.out_dir, study_id).segmenter
        peak = segmenter.get("gpu_peak_memory_mb")
        if isinstance(peak, (int, float)) and not isinstance(peak, bool):
            peaks.setdefault(str(segmenter.get("gpu_name") or "unknown GPU"), []).append(float(peak))
    return [GpuMemorySeen(gpu, max(values), len(values)) for gpu, values in sorted(peaks.items())]
