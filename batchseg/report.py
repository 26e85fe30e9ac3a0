"""Text for people: the status table, failure groups, progress lines, and the review report.

`batchseg report` is built in three steps, I/O only at the ends:
`collect_report` reads the ledger once (summary, studies, history) and each done
study's metadata and vertebra labels, one file at a time; the pure `study_entry`
and `build_report` turn those into a `Report`; `render_html`, `render_csv` and
`report_json` draw it, and `files.write_atomic` puts a file in place by rename.

LSTV findings are candidates for review, never diagnoses. A study whose labels are
not anatomical is "not assessed", never "no candidate"; label 126 (the disc above
the topmost vertebra) is never read as an S1-S2 disc or as sacralization.
"""
from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import write_atomic
from .ledger import STATES
from .pipeline import output_paths


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def progress_line(summary: dict[str, Any]) -> str:
    s = summary["states"]
    finished = s["done"] + s["failed"] + s["skipped"]
    parts = [f"{finished}/{summary['total']} finished", f"done {s['done']}", f"running {s['running']}",
             f"pending {s['pending']}", f"failed {s['failed']}"]
    if "throughput_per_hour" in summary:
        parts.append(f"{summary['throughput_per_hour']:.0f}/h")
    if summary.get("eta_seconds"):
        parts.append(f"ETA {format_duration(summary['eta_seconds'])}")
    return " · ".join(parts)


def format_status(summary: dict[str, Any], *, show_failed: bool = False,
                  jobs: Iterable[dict[str, Any]] = ()) -> str:
    total = summary["total"] or 1
    rows = [[state, str(summary["states"][state]), f"{100.0 * summary['states'][state] / total:.1f}%"]
            for state in STATES]
    out = [table(rows, ["state", "studies", "share"]), "",
           f"{summary['total']} studies, {summary['attempts']} attempts"
           + (f", {summary['retried_studies']} studies retried" if summary.get("retried_studies") else "")]
    if "throughput_per_hour" in summary:
        out.append(f"throughput {summary['throughput_per_hour']:.1f} studies/h, "
                   f"ETA {format_duration(summary.get('eta_seconds'))}")
    if summary.get("median_study_seconds") is not None:
        out.append(f"median {summary['median_study_seconds']:.1f} s per study")
    for title, groups in (("failed", summary["failures"]), ("skipped", summary.get("skipped", []))):
        if not groups:
            continue
        out += ["", f"{title} by error class:"]
        limit = None if show_failed else 3
        rows = [[g["error_class"], str(g["count"]), " ".join(g["studies"][:limit])
                 + (" ..." if limit and len(g["studies"]) > limit else ""), _shorten(g["example"], 90)]
                for g in groups]
        out.append(table(rows, ["error class", "count", "studies", "example"]))
    jobs = list(jobs)
    if jobs:
        out += ["", "Slurm array jobs:"]
        rows = [[str(j["job_id"]), j.get("array_spec", ""),
                 ", ".join(f"{k} {v}" for k, v in sorted(j.get("task_states", {}).items())) or "unknown"]
                for j in jobs]
        out.append(table(rows, ["job", "array", "tasks"]))
        if summary["states"]["pending"] and not any(job_is_active(j) for j in jobs):
            out += ["", f"{summary['states']['pending']} studies are pending and no array task is left to claim "
                        "them: run `batchseg submit --array` again"]
    return "\n".join(out)


def job_is_active(job: dict[str, Any]) -> bool:
    """Whether any task of this array job may still claim studies (Slurm has not ended it)."""
    from .executors.slurm import ENDED_STATES

    states = job.get("task_states", {})
    return not states or any(state not in ENDED_STATES for state in states)


def format_study(study: dict[str, Any], events: list[dict[str, Any]]) -> str:
    keys = ("study_id", "state", "attempts", "series_id", "selection_reason", "input_path", "error_class",
            "error_message", "log_path")
    out = [f"{k}: {study.get(k)}" for k in keys if study.get(k) not in (None, "")]
    if study.get("timings"):
        out.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in study["timings"].items()))
    if study.get("outputs"):
        out += ["outputs:"] + [f"  {k}: {v}" for k, v in study["outputs"].items()]
    rows = [[_clock(e["at"]), e["event"], f"{e['from_state'] or '-'} -> {e['to_state']}",
             _who(e), e.get("error_class") or "", e.get("message") or ""] for e in events]
    out += ["", "history:", table(rows, ["when", "event", "transition", "worker", "error", "message"])]
    return "\n".join(out)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _who(event: dict[str, Any]) -> str:
    if event.get("slurm_array_job_id"):
        return f"{event['slurm_array_job_id']}_{event['slurm_array_task_id']}@{event.get('host') or '?'}"
    if event.get("host"):
        return f"{event['host']}:{event.get('pid')}"
    return ""


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# == the review report (`batchseg report`) =====================================================

# Columns of the per-study CSV, in order; researchers load it with pandas.
OUTPUT_NAMES = tuple(output_paths(Path("."), "0"))
CSV_FIELDS = ("study_id", "series_id", "state", "attempts", "error_class", "error_message", "log_path",
              "seconds", "attempt_seconds", "attempt_errors", "worker", "segmenter", "labels_anatomical",
              "lstv_status", "lumbar_count", "l6_present", "t13_present", "candidates", "lstv_notes",
              "vertebrae", "problems", *OUTPUT_NAMES)

# LSTV status words: "no candidate" is the only one that means "assessed and nothing found".
CANDIDATE, NO_CANDIDATE, NOT_ASSESSED, UNKNOWN = "candidate", "no candidate", "not assessed", "unknown"

LABEL_126_NOTE = ("Label 126 is SPINEPS's \"disc above the topmost vertebra\" class: it is never read as an "
                  "S1-S2 disc or as sacralization.")
LSTV_EVIDENCE_NOTE = ("The only LSTV evidence the labels carry: L6 (label 25) present, T13 (label 28) present, "
                      "and the number of lumbar labels. These are candidates for review, not diagnoses.")


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
    problems: list[str] = field(default_factory=list)


@dataclass
class LstvView:
    """One study's LSTV findings as the report shows them; None means unknown, never False."""

    status: str                       # candidate | no candidate | not assessed | unknown
    lumbar_count: int | None = None
    l6_present: bool | None = None
    t13_present: bool | None = None
    candidates: list[str] = field(default_factory=list)
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
        counts = {CANDIDATE: 0, NO_CANDIDATE: 0, NOT_ASSESSED: 0, UNKNOWN: 0}
        for s in self.studies:
            if s.lstv is not None:
                counts[s.lstv.status] += 1
        return counts

    def candidate_kinds(self) -> dict[str, int]:
        """How many studies carry each kind of candidate (a study may carry several)."""
        kinds: dict[str, int] = {}
        for s in self.with_lstv(CANDIDATE):
            for c in s.lstv.candidates if s.lstv else []:
                kinds[c] = kinds.get(c, 0) + 1
        return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))

    def with_lstv(self, status: str) -> list[StudyEntry]:
        return [s for s in self.studies if s.lstv is not None and s.lstv.status == status]

    def caveats(self) -> list[StudyEntry]:
        """Assessed without a candidate, but with something that limits the finding (e.g. no sacrum)."""
        return [s for s in self.with_lstv(NO_CANDIDATE) if s.lstv and s.lstv.notes]


# -- reading (the I/O edge) -----------------------------------------------------------------------

def read_study_files(out_dir: Path, study_id: str) -> StudyFiles:
    """Read one done study's metadata and vertebra labels; a missing or bad file becomes a problem, not a crash.

    Files are looked for where the project's `out` says, not at the paths the ledger recorded:
    a project folder that was moved or copied still reports on its own results.
    """
    layout = output_paths(Path(out_dir), study_id)
    files = StudyFiles()
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
    timings = meta.get("timings") if isinstance(meta.get("timings"), dict) else {}
    files.seconds = timings.get("total") if isinstance(timings.get("total"), (int, float)) else None
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    files.batchseg_version = versions.get("batchseg")
    # Metadata is published last: the outputs it lists are all in place.
    names = meta.get("outputs") if isinstance(meta.get("outputs"), dict) else {}
    files.outputs = {k: str(layout[k]) for k in OUTPUT_NAMES if k in names and k in layout}
    labels, problem = _json_object(layout["vertebra_labels"], "vertebra labels")
    if labels is None:
        files.problems.append(problem)
    else:
        files.vertebra_labels = {str(k): str(v) for k, v in labels.items()}
    return files


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
    except (OSError, ValueError, TypeError) as exc:
        return None, f"{what} unreadable: {path.name}: {type(exc).__name__}: {exc}"


def collect_report(config: Any, ledger: Any, *, now: float | None = None,
                   slurm_jobs: Iterable[dict[str, Any]] = ()) -> Report:
    """Read the ledger once and every done study's files one at a time, and build the report."""
    from sqlalchemy.engine import make_url

    from . import __version__

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
    """The report's view of a metadata `lstv` block: unassessed or unknown findings are never negatives."""
    if labels_anatomical is False or (lstv is not None and lstv.get("assessed") is False):
        notes = [n for n in (lstv or {}).get("notes", []) if isinstance(n, str)]
        if not any(n.startswith("not assessed") for n in notes):
            notes.insert(0, "not assessed: labels not anatomical")
        return LstvView(NOT_ASSESSED, notes=notes)
    if lstv is None:
        return LstvView(UNKNOWN, notes=["no LSTV findings recorded"])
    candidates = [str(c) for c in lstv.get("candidates") or []]
    count = lstv.get("lumbar_count")
    return LstvView(
        CANDIDATE if candidates else NO_CANDIDATE,
        lumbar_count=count if isinstance(count, int) else None,
        l6_present=bool(lstv.get("l6_present")),
        t13_present=bool(lstv.get("t13_present")),
        candidates=candidates,
        notes=[str(n) for n in lstv.get("notes") or []],
    )


def ordered_vertebrae(vertebra_labels: dict[str, str] | None) -> list[str]:
    """Vertebra and sacrum names of a vertebra-labels file, top to bottom."""
    from .labels import SPINE_ORDER, label_kind

    if not vertebra_labels:
        return []
    rank = {label: i for i, label in enumerate(SPINE_ORDER)}
    found = []
    for key, name in vertebra_labels.items():
        if key.isdigit() and label_kind(int(key)) in ("vertebra", "sacrum"):
            found.append((rank.get(int(key), len(rank) + int(key)), name))
    return [name for _, name in sorted(found)]


def _consistency(lstv: LstvView, vertebra_labels: dict[str, str] | None) -> list[str]:
    """Metadata findings that the vertebra-labels file contradicts (a half-replaced output, say)."""
    from .labels import L6, T13

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
        worker=_who(claims[-1]) if claims else "",
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
    entry.vertebrae = ordered_vertebrae(files.vertebra_labels)
    entry.problems += _consistency(entry.lstv, files.vertebra_labels)
    return entry


def _groups(groups: list[dict[str, Any]]) -> list[ErrorGroup]:
    from .errors import ERROR_CLASSES

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


# -- drawing (pure, streamed) -----------------------------------------------------------------------

def report_json(report: Report) -> dict[str, Any]:
    """The report as one JSON-ready object (`batchseg report --json`)."""
    from dataclasses import asdict

    data = asdict(report)
    data["lstv_counts"] = report.lstv_counts()
    data["lstv_candidate_kinds"] = report.candidate_kinds()
    data["lstv_candidates"] = [s.study_id for s in report.with_lstv(CANDIDATE)]
    data["lstv_not_assessed"] = [s.study_id for s in report.with_lstv(NOT_ASSESSED)]
    return data


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    return str(value)


def csv_row(s: StudyEntry) -> dict[str, str]:
    lstv = s.lstv
    row = {
        "study_id": s.study_id, "series_id": s.series_id, "state": s.state, "attempts": s.attempts,
        "error_class": s.error_class, "error_message": s.error_message, "log_path": s.log_path,
        "seconds": s.seconds, "attempt_seconds": s.attempt_seconds, "attempt_errors": s.attempt_errors,
        "worker": s.worker, "segmenter": s.segmenter, "labels_anatomical": s.labels_anatomical,
        # Blank, not false, wherever nothing was assessed: a blank cell reads as NaN in pandas.
        "lstv_status": lstv.status if lstv else "",
        "lumbar_count": lstv.lumbar_count if lstv else None,
        "l6_present": lstv.l6_present if lstv else None,
        "t13_present": lstv.t13_present if lstv else None,
        "candidates": lstv.candidates if lstv else [],
        "lstv_notes": lstv.notes if lstv else [],
        "vertebrae": s.vertebrae, "problems": s.problems,
        **{name: s.outputs.get(name) for name in OUTPUT_NAMES},
    }
    return {k: _cell(v) for k, v in row.items()}


def render_csv(report: Report) -> Iterator[str]:
    """One row per study (CSV_FIELDS), in ledger order, as chunks of text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for n, study in enumerate(report.studies, 1):
        writer.writerow(csv_row(study))
        if n % 256 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


_CSS = """
:root{--fg:#1c2330;--muted:#5d6676;--line:#e2e5eb;--bg:#f5f6f8;--card:#fff;--accent:#6b3fa0;
--done:#2e7d4f;--failed:#c0392b;--skipped:#8a909a;--pending:#2f6fb3;--running:#c98a00}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 10px;display:flex;align-items:baseline;gap:10px}
h2 .count{font-size:13px;font-weight:600;color:var(--muted)}
h3{font-size:15px;margin:18px 0 8px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin:16px 0}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;color:var(--muted);margin:8px 0 0}
.meta dt{font-weight:600}.meta dd{margin:0;color:var(--fg);word-break:break-all}
nav{margin:14px 0 0;display:flex;gap:14px;flex-wrap:wrap}
nav a{color:var(--accent);text-decoration:none;font-weight:600}
a{color:#2356a8}
.banner{border-left:4px solid var(--running);background:#fff8e6;padding:10px 14px;border-radius:6px;margin:14px 0 0}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1 1 120px;border:1px solid var(--line);border-radius:8px;padding:10px 14px;border-top:4px solid var(--muted)}
.card .n{font-size:26px;font-weight:700}.card .l{color:var(--muted);text-transform:uppercase;font-size:11px;
letter-spacing:.05em}
.card.done{border-top-color:var(--done)}.card.failed{border-top-color:var(--failed)}
.card.skipped{border-top-color:var(--skipped)}.card.pending{border-top-color:var(--pending)}
.card.running{border-top-color:var(--running)}
.bar{display:flex;height:10px;border-radius:5px;overflow:hidden;background:var(--line);margin:14px 0 10px}
.bar span{display:block;height:100%}
.bar .done,.badge.done{background:var(--done)}.bar .failed,.badge.failed{background:var(--failed)}
.bar .skipped,.badge.skipped{background:var(--skipped)}.bar .pending,.badge.pending{background:var(--pending)}
.bar .running,.badge.running{background:var(--running)}
.facts{color:var(--muted);margin:0}.facts b{color:var(--fg)}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;background:#f0f2f5;color:var(--muted);font-weight:600;position:sticky;top:0;
padding:6px 8px;border-bottom:1px solid var(--line)}
td{padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top}
tbody tr:hover{background:#fafbfc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;white-space:nowrap;color:#fff;border-radius:10px;padding:0 8px;font-size:12px;
font-weight:600}
.badge.candidate{background:var(--accent)}.badge.none{background:#dfe3e8;color:var(--fg)}
.badge.unassessed{background:#fff;color:var(--running);border:1px solid var(--running)}
.badge.unknown{background:#fff;color:var(--failed);border:1px solid var(--failed)}
.yes{color:var(--accent);font-weight:700}.warn{color:var(--failed);font-weight:700}.no{color:var(--muted)}.unk{color:var(--muted);font-style:italic}
.cand{font-weight:600}
.note,.small{color:var(--muted);font-size:12px}
ul.notes{margin:0;padding-left:16px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f0f2f5;padding:1px 4px;
border-radius:4px}
.msg{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-word}
.ids{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;max-width:260px}
.nowrap{white-space:nowrap}
img.thumb{height:150px;border-radius:4px;border:1px solid var(--line);background:#000;display:block}
.explain{background:#f7f4fb;border-radius:6px;padding:8px 12px;margin:0 0 12px;color:var(--fg);font-size:13px}
details summary{cursor:pointer;font-weight:600;margin:4px 0 10px}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:24px}
.empty{color:var(--muted);font-style:italic;margin:4px 0}
"""


def relative_href(target: str, base_dir: Path) -> str:
    """A link from a file in `base_dir` to `target`, relative and URL-quoted."""
    import os
    import urllib.parse

    try:
        rel = os.path.relpath(target, base_dir)
    except ValueError:  # another drive: only an absolute link can reach it
        return Path(target).resolve().as_uri()
    return urllib.parse.quote(Path(rel).as_posix())


def embedded_thumbnail(path: str, height: int = 150) -> str | None:
    """A small JPEG data URI of a QC picture, or None when it cannot be read."""
    import base64

    from PIL import Image

    try:
        with Image.open(path) as image:
            image.thumbnail((height * 4, height))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(value: Any) -> str:
    import html

    return "" if value is None else html.escape(str(value), quote=True)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _flag(value: bool | None) -> str:
    if value is None:
        return '<span class="unk">n/a</span>'
    return '<span class="yes">yes</span>' if value else '<span class="no">no</span>'


_LSTV_BADGE = {CANDIDATE: "candidate", NO_CANDIDATE: "none", NOT_ASSESSED: "unassessed", UNKNOWN: "unknown"}


def _ids(ids: list[str], limit: int = 60) -> str:
    """Study ids for a table cell; long lists end with a count (the CSV and JSON hold them all)."""
    shown = " ".join(ids[:limit])
    more = f' <span class="small">+{len(ids) - limit} more (see the per-study table)</span>' \
        if len(ids) > limit else ""
    return _e(shown) + more


def _studies(n: int) -> str:
    return f"{n} study" if n == 1 else f"{n} studies"


def _anatomical(value: bool | None) -> str:
    # Anatomical labels are the normal case; only their absence needs the eye.
    if value is None:
        return '<span class="unk">unknown</span>'
    return "yes" if value else '<span class="warn">no</span>'


def _lstv_badge(lstv: LstvView | None) -> str:
    if lstv is None:
        return ""
    return f'<span class="badge {_LSTV_BADGE[lstv.status]}">{_e(lstv.status)}</span>'


def _notes(items: list[str]) -> str:
    if not items:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in items) + "</ul>"


def _table(headers: list[str], rows: Iterable[str], numeric: Iterable[int] = ()) -> Iterator[str]:
    numeric = set(numeric)
    yield "<table><thead><tr>" + "".join(
        f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    yield "</tr></thead><tbody>\n"
    yield from rows
    yield "</tbody></table>\n"


def render_html(report: Report, *, link: Callable[[str], str], image: Callable[[str], str | None] | None = None,
                ) -> Iterator[str]:
    """The review page, as chunks of one self-contained HTML document (inline CSS, no scripts).

    `link` turns an absolute path into an href (relative to where the page goes); `image` gives
    the src of a QC thumbnail (default: the same link; `embedded_thumbnail` inlines it).
    """
    image = image or link

    def a(path: str | None, text: str) -> str:
        return f'<a href="{_e(link(path))}">{_e(text)}</a>' if path else ""

    def qc(s: StudyEntry) -> str:
        path = s.outputs.get("qc")
        if not path:
            return '<span class="empty">no QC picture</span>'
        src = image(path)
        if not src:
            return a(path, "QC picture") + ' <span class="small">(unreadable)</span>'
        return (f'<a href="{_e(link(path))}"><img class="thumb" src="{_e(src)}" '
                f'alt="QC picture of study {_e(s.study_id)}" loading="lazy"></a>')

    name = Path(report.project).name or report.project
    yield ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
           f"<title>batchseg report: {_e(name)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n")

    # -- header
    yield f"<header>\n<h1>batchseg report: {_e(name)}</h1>\n<dl class=\"meta\">"
    meta = [("project", report.project), ("results", report.results), ("ledger", report.ledger),
            ("generated", report.generated_at), ("batchseg", report.batchseg_version)]
    if report.result_versions and report.result_versions != [report.batchseg_version]:
        meta.append(("results written by", "batchseg " + ", ".join(report.result_versions)))
    if report.segmenters:
        meta.append(("segmenter", ", ".join(report.segmenters)))
    yield "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta) + "</dl>\n"
    for seg, note in report.segmenters.items():
        if note:
            yield f'<div class="banner"><b>segmenter {_e(seg)}:</b> {_e(note)}</div>\n'
    yield ('<nav><a href="#progress">Progress</a><a href="#lstv">LSTV candidates</a>'
           '<a href="#failures">Failures</a><a href="#skipped">Skipped</a><a href="#studies">All studies</a>'
           + ('<a href="#slurm">Slurm</a>' if report.slurm_jobs else "") + "</nav>\n</header>\n")

    # -- progress
    total = report.total or 1
    yield '<section id="progress">\n<h2>Progress</h2>\n<div class="cards">'
    yield f'<div class="card"><div class="n">{report.total}</div><div class="l">studies</div></div>'
    for state in STATES:
        yield (f'<div class="card {state}"><div class="n">{report.states.get(state, 0)}</div>'
               f'<div class="l">{state}</div></div>')
    yield '</div>\n<div class="bar">' + "".join(
        f'<span class="{state}" style="width:{100.0 * report.states.get(state, 0) / total:.3f}%" '
        f'title="{state} {report.states.get(state, 0)}"></span>'
        for state in ("done", "running", "pending", "failed", "skipped") if report.states.get(state)) + "</div>\n"
    facts = [f"<b>{report.attempts}</b> attempts"]
    if report.retried_studies:
        facts.append(f"<b>{report.retried_studies}</b> studies retried")
    if report.median_study_seconds is not None:
        facts.append(f"median <b>{report.median_study_seconds:.1f} s</b> per study")
    if report.throughput_per_hour is not None:
        facts.append(f"throughput <b>{report.throughput_per_hour:.1f}</b> studies/h (last hour)")
    remaining = report.states.get("pending", 0) + report.states.get("running", 0)
    if remaining and report.eta_seconds is not None:
        facts.append(f"ETA <b>{_e(format_duration(report.eta_seconds))}</b> for {_studies(remaining)}")
    elif remaining:
        facts.append(f"{_studies(remaining)} to go; ETA unknown until two studies finish within an hour")
    else:
        facts.append("nothing left to run")
    yield '<p class="facts">' + " · ".join(facts) + "</p>\n</section>\n"

    # -- LSTV
    counts = report.lstv_counts()
    candidates = report.with_lstv(CANDIDATE)
    yield (f'<section id="lstv">\n<h2>LSTV candidates for review <span class="count">{len(candidates)} of '
           f'{sum(counts.values())} done studies</span></h2>\n')
    yield (f'<p class="explain">{_e(LSTV_EVIDENCE_NOTE)} {_e(LABEL_126_NOTE)} Assessed: '
           f'<b>{counts[CANDIDATE]}</b> candidate · <b>{counts[NO_CANDIDATE]}</b> no candidate · '
           f'<b>{counts[NOT_ASSESSED]}</b> not assessed (labels not anatomical) · '
           f'<b>{counts[UNKNOWN]}</b> unknown (findings missing).</p>\n')
    if candidates:
        yield '<p class="facts">by finding: ' + " · ".join(
            f"{_e(kind)} <b>{n}</b>" for kind, n in report.candidate_kinds().items()) + "</p>\n"
        yield from _table(
            ["study", "lumbar count", "L6 present", "T13 present", "candidates", "notes", "vertebrae", "QC"],
            (f"<tr><td>{_e(s.study_id)}</td><td class=\"num\">{_e(s.lstv.lumbar_count)}</td>"
             f"<td>{_flag(s.lstv.l6_present)}</td><td>{_flag(s.lstv.t13_present)}</td>"
             f"<td class=\"cand\">{_notes(s.lstv.candidates)}</td><td>{_notes(s.lstv.notes + s.problems)}</td>"
             f"<td class=\"small\">{_e(' '.join(s.vertebrae))}</td><td>{qc(s)}</td></tr>\n"
             for s in candidates if s.lstv), numeric=[1])
    else:
        yield '<p class="empty">No LSTV candidates among the assessed studies.</p>\n'
    unassessed = report.with_lstv(NOT_ASSESSED)
    if unassessed:
        yield (f"<h3>Not assessed: labels not anatomical ({len(unassessed)})</h3>\n<p class=\"note\">The segmenter "
               "numbered vertebrae top to bottom without the labeling model; these studies are neither candidates "
               "nor negatives.</p>\n")
        yield from _table(["study", "segmenter", "notes", "QC"], (
            f"<tr><td>{_e(s.study_id)}</td><td>{_e(s.segmenter)}</td><td>{_notes(s.lstv.notes)}</td>"
            f"<td>{a(s.outputs.get('qc'), 'QC picture')}</td></tr>\n" for s in unassessed if s.lstv))
    unknown = report.with_lstv(UNKNOWN)
    if unknown:
        yield f"<h3>Findings unknown ({len(unknown)})</h3>\n"
        yield from _table(["study", "problem"], (
            f"<tr><td>{_e(s.study_id)}</td><td>{_notes(s.problems + (s.lstv.notes if s.lstv else []))}</td></tr>\n"
            for s in unknown))
    caveats = report.caveats()
    if caveats:
        yield (f"<h3>No candidate, with caveats ({len(caveats)})</h3>\n<p class=\"note\">Assessed without a "
               "candidate, but the labels leave room for doubt.</p>\n")
        yield from _table(["study", "lumbar count", "notes", "vertebrae", "QC"], (
            f"<tr><td>{_e(s.study_id)}</td><td class=\"num\">{_e(s.lstv.lumbar_count)}</td>"
            f"<td>{_notes(s.lstv.notes)}</td><td class=\"small\">{_e(' '.join(s.vertebrae))}</td>"
            f"<td>{a(s.outputs.get('qc'), 'QC picture')}</td></tr>\n" for s in caveats if s.lstv), numeric=[1])
    yield "</section>\n"

    # -- failures and skipped
    for anchor, title, groups, state in (("failures", "Failures by error class", report.failures, "failed"),
                                         ("skipped", "Skipped studies", report.skipped, "skipped")):
        yield (f'<section id="{anchor}">\n<h2>{_e(title)} <span class="count">'
               f"{_studies(report.states.get(state, 0))}</span></h2>\n")
        if not groups:
            yield f'<p class="empty">No {state} studies.</p>\n</section>\n'
            continue
        if state == "failed":
            yield from _table(["error class", "count", "studies", "example message", "log"], (
                f"<tr><td><code>{_e(g.error_class)}</code><div class=\"small\">{_e(g.description)}"
                f"{'; retried' if g.retried else '; not retried'}</div></td><td class=\"num\">{g.count}</td>"
                f"<td class=\"ids\">{_ids(g.studies)}</td><td class=\"msg\">{_e(g.example)}</td>"
                f"<td>{a(g.log, 'log')}</td></tr>\n" for g in groups), numeric=[1])
        else:
            yield from _table(["error class", "count", "studies"], (
                f"<tr><td><code>{_e(g.error_class)}</code><div class=\"small\">{_e(g.description)}</div></td>"
                f"<td class=\"num\">{g.count}</td><td class=\"ids\">{_ids(g.studies)}</td></tr>\n"
                for g in groups), numeric=[1])
        if state == "skipped":
            rows = [s for s in report.studies if s.state == "skipped"]
            yield "<h3>Reasons</h3>\n"
            yield from _table(["study", "error class", "reason"], (
                f"<tr><td>{_e(s.study_id)}</td><td><code>{_e(s.error_class)}</code></td>"
                f"<td class=\"msg\">{_e(s.error_message)}</td></tr>\n" for s in rows))
        yield "</section>\n"

    # -- every study
    yield (f'<section id="studies">\n<h2>All studies <span class="count">{len(report.studies)}</span></h2>\n'
           f"<details{' open' if len(report.studies) <= 300 else ''}><summary>one row per study, in ledger order "
           "(the CSV report holds the same and more)</summary>\n")

    def study_row(s: StudyEntry) -> str:
        files = " · ".join(x for x in (a(s.outputs.get("qc"), "QC"), a(s.outputs.get("metadata"), "metadata"),
                                     a(s.log_path, "log")) if x)
        error = (f"<code>{_e(s.error_class)}</code><div class=\"msg\">{_e(s.error_message)}</div>"
                 if s.error_class else "")
        if s.attempt_errors and s.state == "done":
            error += f"<div class=\"small\">earlier attempts: {_e(', '.join(s.attempt_errors))}</div>"
        if s.problems:
            error += _notes(s.problems)
        anatomical = _anatomical(s.labels_anatomical) if s.state == "done" else ""
        return (f"<tr><td>{_e(s.study_id)}</td><td><span class=\"badge {_e(s.state)}\">{_e(s.state)}</span></td>"
                f"<td class=\"num\">{s.attempts}</td><td class=\"num\">{_seconds(s.seconds)}</td>"
                f"<td>{_e(s.segmenter)}</td><td>{anatomical}</td><td>{_lstv_badge(s.lstv)}</td>"
                f"<td>{error}</td><td class=\"nowrap\">{files}</td></tr>\n")

    yield from _table(["study", "state", "attempts", "seconds", "segmenter", "labels anatomical", "LSTV",
                       "error", "files"], (study_row(s) for s in report.studies), numeric=[2, 3])
    yield "</details>\n</section>\n"

    if report.slurm_jobs:
        yield '<section id="slurm">\n<h2>Slurm array jobs</h2>\n'
        yield from _table(["job", "array", "tasks"], (
            f"<tr><td>{_e(j.get('job_id'))}</td><td>{_e(j.get('array_spec', ''))}</td><td>"
            f"{_e(', '.join(f'{k} {v}' for k, v in sorted((j.get('task_states') or {}).items())) or 'unknown')}"
            "</td></tr>\n" for j in report.slurm_jobs))
        yield "</section>\n"
    yield (f"<footer>batchseg {_e(report.batchseg_version)} · {_e(report.generated_at)} · "
           "one file, no scripts; links are relative to this file</footer>\n</main>\n</body>\n</html>\n")


# -- writing (the other I/O edge) -----------------------------------------------------------------

def write_html(report: Report, path: Path, *, embed: bool = False) -> Path:
    """The HTML report at `path`, its links relative to `path`'s folder; `embed` inlines QC thumbnails."""
    base = Path(path).resolve().parent

    def link(target: str) -> str:
        return relative_href(target, base)

    return write_atomic(path, render_html(report, link=link, image=embedded_thumbnail if embed else None))


def write_csv(report: Report, path: Path) -> Path:
    return write_atomic(path, render_csv(report))
