"""The review report's model (`batchseg report`): what the report says of each study (`study_entry`, pure,
from its ledger row and what its files say), and the `Report` built from those entries.

A `ReportBuilder` takes the entries in ledger order and keeps the counts and what the page shows in full
(every failure, LSTV candidate, caveat and problem with a study's files) and, of the long lists, only the
first `all_rows` studies, so it stays flat in memory whatever the ledger's size; builders of consecutive
runs of the ledger merge (collect.py reads the ledger in such runs). `report_json` is the `--json` form. The
page and the table are drawn by `html_page` and `csv_rows`.

LSTV findings are candidates for review, never diagnoses. A study whose lumbar count
is not assessable (a junction out of view, labels not anatomical, irregular labels) is
"not assessable", never "no candidate"; label 126 (the disc above the topmost vertebra)
is never read as an S1-S2 disc or as sacralization. "With caveats" holds only studies
whose findings carry a caveat (lstv.py: caveats apart from informational notes).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..findings_words import PATTERNS, VERDICTS, summarize
from ..labels import L6, SACRUM, SPINE_ORDER, T13, VERTEBRA_NAMES
from ..outputs import LEVEL_DETAIL_SHOWN, StudyFiles, read_study_files
from .status_text import worker_label

# LSTV status words: "no candidate" is the only one that means "counted and nothing found".
CANDIDATE, NO_CANDIDATE, NOT_ASSESSABLE, UNKNOWN = "candidate", "no candidate", "not assessable", "unknown"

# Studies named per reason a level check was not made (the page's cell; the CSV has every study).
NOT_CHECKED_IDS = 60
# The page lists at most this many studies in each long table (every study, not assessed, findings unknown,
# skipped); `report --all-rows N` changes it. The CSV always has every study.
ALL_ROWS = 3000


@dataclass(slots=True, frozen=True)
class LevelView:
    """One study's level check as the report shows it (levels.py); every number is checked for its type.
    Frozen: the studies without a level check share one."""

    verdict: str                          # agree | shifted | disagree | not_available | not_checked
    points: int | None = None             # annotated points on the study's series
    matched: int | None = None            # at a disc of the annotated name
    shift: int | None = None              # -1 | +1 | None (levels.DEFINITIONS)
    max_distance_mm: float | None = None  # largest long-axis distance, mm
    reason: str | None = None
    disagreements: list[str] = field(default_factory=list)   # "L5/S1: SPINEPS L4/L5, 1.2 mm along the spine"


@dataclass(slots=True)
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


@dataclass(slots=True)
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
    outputs: Mapping[str, str] = field(default_factory=dict)   # output name -> path (outputs.OutputPaths)
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
    shown: list[StudyEntry]                 # the first `all_rows` studies in ledger order: the page's table
    all_rows: int
    lstv_totals: dict[str, int]             # done studies per LSTV status
    candidates: list[StudyEntry]            # every LSTV candidate
    caveat_studies: list[StudyEntry]        # every "no candidate" with a note that limits it
    not_assessable: list[StudyEntry]        # the first `all_rows` (lstv_totals has them all)
    unknown: list[StudyEntry]               # the first `all_rows` (lstv_totals has them all)
    failed: list[StudyEntry]                # every failed study
    skipped_studies: list[StudyEntry]       # the first `all_rows` (states has them all)
    file_problems: list[StudyEntry]         # every done study, findings known, whose files have a problem
    level_verdicts: dict[str, int]          # done studies per level-check verdict
    level_checked: list[StudyEntry]         # shifted, then disagree (every one), then agree (the first `all_rows`)
    level_not_checked: dict[str, tuple[int, list[str]]]   # why -> (studies, the first 60 of them)
    segmenters: dict[str, str] = field(default_factory=dict)   # name -> its note (e.g. "synthetic phantoms only")
    result_versions: list[str] = field(default_factory=list)   # batchseg versions that wrote the results
    slurm_jobs: list[dict[str, Any]] = field(default_factory=list)
    studies: list[StudyEntry] | None = None  # every study, when asked for (`report --json`); else None

    def lstv_counts(self) -> dict[str, int]:
        return {status: self.lstv_totals.get(status, 0) for status in (CANDIDATE, NO_CANDIDATE, NOT_ASSESSABLE, UNKNOWN)}

    def candidate_kinds(self) -> dict[str, int]:
        """How many studies carry each candidate pattern (a study may carry several)."""
        kinds: dict[str, int] = {}
        for s in self.candidates:
            for c in dict.fromkeys(s.lstv.candidate_patterns if s.lstv else []):
                kinds[c] = kinds.get(c, 0) + 1
        return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))

    def level_summary(self) -> dict[str, Any]:
        """The cohort's level check: counts per verdict and the agreement rate (findings_words.summarize)."""
        return summarize(verdict for verdict, n in self.level_verdicts.items() for _ in range(n))

    def level_order(self) -> list[StudyEntry]:
        """The done studies whose levels could be checked, the disagreeing ones first (shifted, disagree, agree):
        every disagreeing one, the first `all_rows` that agree."""
        return self.level_checked

    def caveats(self) -> list[StudyEntry]:
        """Counted without a candidate, but with a caveat on how to read it (a label in pieces, say)."""
        return self.caveat_studies


# The builder's lists the page shows in full; of the others, the first `all_rows`.
_IN_FULL = frozenset((CANDIDATE, "caveat", "failed", "problems", "shifted", "disagree"))


class ReportBuilder:
    """Takes the study entries one at a time, in ledger order, and keeps what the report needs of them:
    counts, everything the page shows in full, and the first `all_rows` of each long list. Builders of
    consecutive runs of the ledger merge into the builder of the whole (`merge`, in ledger order)."""

    def __init__(self, all_rows: int = ALL_ROWS, *, keep_all: bool = False) -> None:
        self.all_rows = all_rows
        self.everything: list[StudyEntry] | None = [] if keep_all else None
        self.shown: list[StudyEntry] = []
        self.lstv_totals: dict[str, int] = {}
        self.lists: dict[str, list[StudyEntry]] = {k: [] for k in (CANDIDATE, "caveat", NOT_ASSESSABLE, UNKNOWN,
                                                                    "failed", "skipped", "problems")}
        self.segmenters: dict[str, str] = {}
        self.versions: set[str] = set()
        self.level_verdicts: dict[str, int] = {}
        self.level_lists: dict[str, list[StudyEntry]] = {"shifted": [], "disagree": [], "agree": []}
        self.level_not_checked: dict[str, tuple[int, list[str]]] = {}

    def _keep(self, name: str, entry: StudyEntry) -> None:
        kept = self.lists[name]
        if name in _IN_FULL or len(kept) < self.all_rows:
            kept.append(entry)

    def add(self, s: StudyEntry) -> StudyEntry:
        if len(self.shown) < self.all_rows:
            self.shown.append(s)
        if self.everything is not None:
            self.everything.append(s)
        if s.segmenter and s.segmenter not in self.segmenters:
            self.segmenters[s.segmenter] = s.segmenter_note or ""
        if s.made_by:
            self.versions.add(s.made_by)
        if s.state == "failed":
            self._keep("failed", s)
        elif s.state == "skipped":
            self._keep("skipped", s)
        status = s.lstv.status if s.lstv is not None else None
        if status is not None:
            self.lstv_totals[status] = self.lstv_totals.get(status, 0) + 1
        if status == CANDIDATE:
            self._keep(CANDIDATE, s)
        elif status in (NOT_ASSESSABLE, UNKNOWN):
            self._keep(status, s)
        elif status == NO_CANDIDATE and s.lstv and s.lstv.caveats:
            self._keep("caveat", s)
        # A candidate's problems show in its own row, an unknown study's are why it is unknown.
        if s.problems and status in (NO_CANDIDATE, NOT_ASSESSABLE):
            self._keep("problems", s)
        if s.levels is not None:
            self._add_levels(s)
        return s

    def _add_levels(self, s: StudyEntry) -> None:
        verdict = s.levels.verdict if s.levels else "not_checked"
        self.level_verdicts[verdict] = self.level_verdicts.get(verdict, 0) + 1
        kept = self.level_lists.get(verdict)
        if kept is not None:
            if verdict in _IN_FULL or len(kept) < self.all_rows:
                kept.append(s)
        elif s.levels is not None:
            why = s.levels.reason or verdict
            n, ids = self.level_not_checked.get(why, (0, []))
            if len(ids) < NOT_CHECKED_IDS:
                ids.append(s.study_id)
            self.level_not_checked[why] = (n + 1, ids)

    def merge(self, later: "ReportBuilder") -> None:
        """Add what `later` kept of the run of the ledger that follows this builder's (same `all_rows`)."""
        def extend(kept: list[StudyEntry], more: list[StudyEntry], name: str) -> None:
            kept += more if name in _IN_FULL else more[:max(0, self.all_rows - len(kept))]

        extend(self.shown, later.shown, "shown")
        if self.everything is not None and later.everything is not None:
            self.everything += later.everything
        for name, kept in self.lists.items():
            extend(kept, later.lists[name], name)
        for name, kept in self.level_lists.items():
            extend(kept, later.level_lists[name], name)
        for counts, more in ((self.lstv_totals, later.lstv_totals), (self.level_verdicts, later.level_verdicts)):
            for key, n in more.items():
                counts[key] = counts.get(key, 0) + n
        for name, note in later.segmenters.items():
            self.segmenters.setdefault(name, note)
        self.versions |= later.versions
        for why, (n, ids) in later.level_not_checked.items():
            had, shown = self.level_not_checked.get(why, (0, []))
            self.level_not_checked[why] = (had + n, shown + ids[:max(0, NOT_CHECKED_IDS - len(shown))])

    def passing(self, entries: Iterable[StudyEntry]) -> Iterator[StudyEntry]:
        """The same entries, each one added on its way through."""
        for entry in entries:
            yield self.add(entry)

    def build(self, summary: dict[str, Any], *, project: str, results: str, ledger_url: str, version: str,
              now: float | None = None, slurm_jobs: Iterable[dict[str, Any]] = ()) -> Report:
        import datetime as dt

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
            shown=self.shown,
            all_rows=self.all_rows,
            lstv_totals=dict(self.lstv_totals),
            candidates=self.lists[CANDIDATE],
            caveat_studies=self.lists["caveat"],
            not_assessable=self.lists[NOT_ASSESSABLE],
            unknown=self.lists[UNKNOWN],
            failed=self.lists["failed"],
            skipped_studies=self.lists["skipped"],
            file_problems=self.lists["problems"],
            level_verdicts=dict(self.level_verdicts),
            level_checked=[s for verdict in ("shifted", "disagree", "agree") for s in self.level_lists[verdict]],
            level_not_checked=dict(self.level_not_checked),
            segmenters=self.segmenters,
            result_versions=sorted(self.versions),
            slurm_jobs=list(slurm_jobs),
            studies=self.everything,
        )


# -- building (pure) --------------------------------------------------------------------------------

def lstv_view(lstv: dict[str, Any] | None, labels_anatomical: bool | None) -> LstvView:
    """The report's view of a metadata `lstv` object: not assessable or unknown findings are never negatives.

    Every field is type-checked: an odd or older metadata file gives "unknown", never a crash or a negative.
    """
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
            kinds.append(_shared(c["pattern"]))
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
        pattern=_shared(pattern),
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


_NOT_CHECKED = LevelView("not_checked", reason="no level check in the metadata: run `batchseg levels`")


def level_view(levels: dict[str, Any] | None) -> LevelView:
    """The report's view of a metadata `levels` object; outputs made before the level check are "not_checked"."""
    if not isinstance(levels, dict) or levels.get("verdict") not in VERDICTS:
        return _NOT_CHECKED
    disagreements = []
    for d in levels.get("details") if isinstance(levels.get("details"), list) else []:
        if isinstance(d, dict) and d.get("status") in LEVEL_DETAIL_SHOWN:
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


@lru_cache(maxsize=1)
def _vertebra_ranks() -> dict[str, int | None]:
    """Label (as a vertebra-labels key) -> place top to bottom for every vertebra and the sacrum; None for the
    other labels below 1000 (discs, endplates: not vertebrae), so that the usual keys need one lookup."""
    order = {label: i for i, label in enumerate(SPINE_ORDER)}
    ranks: dict[str, int | None] = {str(n): None for n in range(1000)}
    ranks.update({str(label): order.get(label, len(order) + label) for label in (*VERTEBRA_NAMES, SACRUM)})
    return ranks


def ordered_vertebrae(vertebra_labels: dict[str, str] | None) -> list[str]:
    """Vertebra and sacrum names of a vertebra-labels file, top to bottom."""
    if not vertebra_labels:
        return []
    # A cohort's label files hold a few dozen different sets of vertebrae: each set is ordered once.
    return list(_ordered(tuple(vertebra_labels.items())))


@lru_cache(maxsize=4096)
def _ordered(labels: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    ranks = _vertebra_ranks()
    found = []
    for key, name in labels:
        rank = ranks.get(key, -1)
        if rank == -1:
            # isascii and isdecimal: "²" is a digit to str.isdigit, and int() refuses it
            rank = ranks.get(str(int(key))) if key.isascii() and key.isdecimal() and len(key) < 6 else None  # "020"
        if rank is not None:
            found.append((rank, name))
    found.sort()
    # The usual names as one shared string each: the page keeps tens of thousands of these lists.
    return tuple(_NAMES.get(name, name) for _, name in found)


_NAMES = {name: name for name in VERTEBRA_NAMES.values()}


# The vertebra-labels keys of L6 and T13.
_L6_KEY, _T13_KEY = str(L6), str(T13)


def _consistency(lstv: LstvView, vertebra_labels: dict[str, str] | None) -> list[str]:
    """Metadata findings that the vertebra-labels file contradicts (a half-replaced output, say)."""
    if vertebra_labels is None or lstv.status not in (CANDIDATE, NO_CANDIDATE):
        return []
    problems = []
    if (_L6_KEY in vertebra_labels) != bool(lstv.l6_present):
        problems.append("metadata and vertebra labels disagree about L6")
    if (_T13_KEY in vertebra_labels) != bool(lstv.t13_present):
        problems.append("metadata and vertebra labels disagree about T13")
    return problems


def _shared(value: Any) -> Any:
    """One string object for each repeated text (states, error classes, workers, segmenters, versions): the
    page keeps tens of thousands of entries, and each of them a copy of the same few words."""
    return sys.intern(value) if value.__class__ is str else value


def study_entry(row: dict[str, Any], files: StudyFiles | None) -> StudyEntry:
    """One study's line of the report from its ledger row (Ledger.report_rows) and its files (done studies only)."""
    get = row.get
    timings = get("timings")
    # The ledger's pipeline seconds (the done attempt's, publishing included), else the metadata's.
    seconds = timings.get("total") if isinstance(timings, dict) else None
    if seconds is None and files is not None:
        seconds = files.seconds
    attempt_seconds = get("attempt_seconds")
    state = _shared(row["state"])
    failed = state != "done"
    # StudyEntry's first eleven fields, in its order.
    head = (str(row["study_id"]), get("series_id"), state, int(get("attempts") or 0),
            _shared(get("error_class")) if failed else None, get("error_message") if failed else None,
            get("log_path") if failed else None, seconds,
            round(attempt_seconds, 3) if attempt_seconds is not None else None,
            list(map(_shared, get("attempt_errors") or ())),
            # The study row keeps the last claim's worker (every claim writes it).
            _shared(worker_label(get("worker_host"), get("worker_pid"), get("slurm_array_job_id"),
                                 get("slurm_array_task_id"))))
    if files is None:
        return StudyEntry(*head)
    segmenter = files.segmenter
    anatomical = segmenter.get("labels_anatomical")
    anatomical = anatomical if isinstance(anatomical, bool) else None
    if files.metadata_path is None or (files.lstv is None and anatomical is not False):
        lstv = LstvView(UNKNOWN, notes=["metadata missing or unreadable: findings unknown"]
                        if files.metadata_path is None else ["no LSTV findings recorded"])
    else:
        lstv = lstv_view(files.lstv, anatomical)
    version = files.batchseg_version
    # One construction with every field (the entry is made a hundred thousand times).
    return StudyEntry(
        *head, segmenter=_shared(segmenter.get("name")), segmenter_note=_shared(segmenter.get("note")),
        made_by=_shared(version) if isinstance(version, str) else None, labels_anatomical=anatomical, lstv=lstv,
        levels=level_view(files.levels) if files.metadata_path is not None else None,
        vertebrae=ordered_vertebrae(files.vertebra_labels), outputs=files.outputs,
        problems=files.problems + _consistency(lstv, files.vertebra_labels))


def _groups(groups: list[dict[str, Any]]) -> list[ErrorGroup]:
    from ..errors import ERROR_CLASSES

    out = []
    for g in groups:
        retried, description = ERROR_CLASSES.get(g["error_class"], (True, "unknown error class"))
        out.append(ErrorGroup(g["error_class"], description, retried, int(g["count"]), list(g["studies"]),
                              g.get("example") or "", g.get("log")))
    return out


# -- the --json form ------------------------------------------------------------------------------

# Report fields that hold entries for the page; the JSON has every study in `studies` instead.
_PAGE_LISTS = ("shown", "candidates", "caveat_studies", "not_assessable", "unknown", "failed", "skipped_studies",
               "file_problems")


def report_json(report: Report) -> dict[str, Any]:
    """The report as one JSON-ready object (`batchseg report --json`): needs every study (`keep_all`)."""
    from dataclasses import fields

    if report.studies is None:
        raise ValueError("report_json needs a report collected with keep_all=True (every study)")
    data = {f.name: getattr(report, f.name) for f in fields(report) if f.name not in _PAGE_LISTS}
    data = json.loads(json.dumps(data, default=_plain))
    data["lstv_counts"] = report.lstv_counts()
    data["lstv_candidate_kinds"] = report.candidate_kinds()
    data["lstv_candidates"] = [s.study_id for s in report.candidates]
    data["lstv_not_assessable"] = [s.study_id for s in report.studies
                                   if s.lstv and s.lstv.status == NOT_ASSESSABLE]
    data["lstv_with_caveats"] = [s.study_id for s in report.caveat_studies]
    data["level_check"] = {**report.level_summary(),
                           "disagreeing": [s.study_id for s in report.level_checked if s.levels
                                           and s.levels.verdict != "agree"]}
    return data


def _plain(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


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
    peaks: dict[str, list[float]] = {}
    for row in ledger.recently_done(last):
        segmenter = read_study_files(config.out_dir, row["study_id"]).segmenter
        peak = segmenter.get("gpu_peak_memory_mb")
        if isinstance(peak, (int, float)) and not isinstance(peak, bool):
            peaks.setdefault(str(segmenter.get("gpu_name") or "unknown GPU"), []).append(float(peak))
    return [GpuMemorySeen(gpu, max(values), len(values)) for gpu, values in sorted(peaks.items())]
