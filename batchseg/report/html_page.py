"""The review report as one HTML page (`batchseg report`): self-contained, inline CSS, no scripts.

`render_html` yields the page section by section (header, progress, LSTV candidates, failures
and skipped studies, every study, Slurm jobs), each drawn by its own function below; the
stylesheet is `report.css` beside this file, shipped as package data and inlined into the page.
"""
from __future__ import annotations

import io
import os
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..ledger_summary import STATES
from .model import CANDIDATE, NO_CANDIDATE, NOT_ASSESSABLE, UNKNOWN, ErrorGroup, LstvView, Report, StudyEntry
from .status_text import format_duration

LABEL_126_NOTE = ("Label 126 is SPINEPS's \"disc above the topmost vertebra\" class: it is never read as an "
                  "S1-S2 disc or as sacralization.")
LEVEL_CHECK_NOTE = ("Each radiologist's point of the dataset's <split>_label_coordinates.csv (pixel column x, row y "
                    "of the image with that InstanceNumber, placed in world RAS+ mm through that file's "
                    "ImagePositionPatient, ImageOrientationPatient and PixelSpacing) is compared with the nearest "
                    "disc SPINEPS's labels name, nearest along the spine's long axis at that disc (the canal point "
                    "lies 15-25 mm behind the disc centre). agree: every point at a disc of its level; shifted: "
                    "every point one level off the same way (shift -1: SPINEPS names the discs one level higher "
                    "than the annotators; +1: lower); disagree: anything else. Distances are along the long axis, "
                    "in mm. A disagreement is a review signal, not proof of either count.")
LSTV_EVIDENCE_NOTE = ("The LSTV evidence the labels can carry: L6 (label 25) or T13 (label 28) present, T11 directly "
                      "above L1 (T12 skipped), L4 directly above the sacrum, a disc inside the sacrum. A lumbar count "
                      "needs both junctions in view (a thoracic vertebra above the first lumbar one, the sacrum below "
                      "the last) and regular labels; otherwise the study is not assessable. These are candidates "
                      "for review, not diagnoses.")



@lru_cache(maxsize=1)
def stylesheet() -> str:
    """The page's CSS (report.css, package data)."""
    return files("batchseg.report").joinpath("report.css").read_text(encoding="utf-8")


def relative_href(target: str, base_dir: Path) -> str:
    """A link from a file in `base_dir` to `target`, relative and URL-quoted."""
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
        with warnings.catch_warnings():
            # Over Pillow's pixel limit (a decompression bomb, or just a giant file): no thumbnail,
            # rather than gigabytes of pixels or an exception that ends the report.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.thumbnail((height * 4, height))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, "JPEG", quality=85)
    except (OSError, ValueError, MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning):
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


_LSTV_BADGE = {CANDIDATE: "candidate", NO_CANDIDATE: "none", NOT_ASSESSABLE: "unassessed", UNKNOWN: "unknown"}


def _ids(ids: list[str], total: int, where: str, limit: int = 60) -> str:
    """Study ids for a table cell; long lists end with a count and where to find the rest."""
    shown = " ".join(ids[:limit])
    more = f' <span class="small">+{total - min(limit, len(ids))} more ({_e(where)})</span>' \
        if total > min(limit, len(ids)) else ""
    return _e(shown) + more


def _first_of(kept: int, total: int) -> str:
    """The note under a table that stops at --all-rows: how many it shows, and where the rest are."""
    if total <= kept:
        return ""
    return (f'<p class="note">The first {kept} of {total} (batchseg report --all-rows N shows more); '
            "the CSV report (batchseg report --csv FILE) has every study.</p>\n")


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



@dataclass
class Links:
    """How the page reaches a file: `link` turns an absolute path into an href (relative to where the
    page goes); `image` gives the src of a QC thumbnail (that link, or `embedded_thumbnail`'s data URI)."""

    link: Callable[[str], str]
    image: Callable[[str], str | None]

    def a(self, path: str | None, text: str) -> str:
        return f'<a href="{_e(self.link(path))}">{_e(text)}</a>' if path else ""

    def qc(self, s: StudyEntry) -> str:
        path = s.outputs.get("qc")
        if not path:
            return '<span class="empty">no QC picture</span>'
        src = self.image(path)
        if not src:
            return self.a(path, "QC picture") + ' <span class="small">(unreadable)</span>'
        return (f'<a href="{_e(self.link(path))}"><img class="thumb" src="{_e(src)}" '
                f'alt="QC picture of study {_e(s.study_id)}" loading="lazy"></a>')


def render_html(report: Report, *, link: Callable[[str], str], image: Callable[[str], str | None] | None = None,
                ) -> Iterator[str]:
    """The review page, as chunks of one self-contained HTML document (inline CSS, no scripts).

    `link` turns an absolute path into an href (relative to where the page goes); `image` gives
    the src of a QC thumbnail (default: the same link; `embedded_thumbnail` inlines it).
    """
    links = Links(link, image or link)
    name = Path(report.project).name or report.project
    yield _head(name)
    yield from _header(report, name)
    yield from _progress(report)
    yield from _lstv(report, links)
    yield from _level_check(report, links)
    yield from _file_problems(report, links)
    yield from _error_groups(report, links, "failures", "Failures by error class", report.failures, "failed")
    yield from _error_groups(report, links, "skipped", "Skipped studies", report.skipped, "skipped")
    yield from _every_study(report, links)
    yield from _slurm_jobs(report)
    yield _footer(report)


def _head(name: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>batchseg report: {_e(name)}</title>\n<style>\n{stylesheet()}</style>\n</head>\n<body>\n<main>\n")


def _header(report: Report, name: str) -> Iterator[str]:
    """Title, where the project and its results are, who made the page, segmenter banners, the section links."""
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
    yield ('<nav><a href="#progress">Progress</a><a href="#lstv">LSTV candidates</a><a href="#levels">Level check</a>'
           + ('<a href="#problems">File problems</a>' if report.file_problems else "")
           + '<a href="#failures">Failures</a><a href="#skipped">Skipped</a><a href="#studies">All studies</a>'
           + ('<a href="#slurm">Slurm</a>' if report.slurm_jobs else "") + "</nav>\n</header>\n")


def _progress(report: Report) -> Iterator[str]:
    """A card per state, the bar, and attempts, median, throughput and ETA in words."""
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


def _lstv(report: Report, links: Links) -> Iterator[str]:
    """The candidates for review, then the studies not assessable, unknown, or without a candidate but caveated."""
    counts = report.lstv_counts()
    candidates = report.candidates
    yield (f'<section id="lstv">\n<h2>LSTV candidates for review <span class="count">{len(candidates)} of '
           f'{sum(counts.values())} done studies</span></h2>\n')
    yield (f'<p class="explain">{_e(LSTV_EVIDENCE_NOTE)} {_e(LABEL_126_NOTE)} '
           f'<b>{counts[CANDIDATE]}</b> candidate · <b>{counts[NO_CANDIDATE]}</b> no candidate (counted) · '
           f'<b>{counts[NOT_ASSESSABLE]}</b> not assessable · '
           f'<b>{counts[UNKNOWN]}</b> unknown (findings missing).</p>\n')
    if candidates:
        yield '<p class="facts">by pattern: ' + " · ".join(
            f"{_e(kind)} <b>{n}</b>" for kind, n in report.candidate_kinds().items()) + "</p>\n"
        yield from _table(
            ["study", "pattern", "lumbar count", "L6 present", "T13 present", "candidates", "caveats", "notes",
             "vertebrae", "QC"],
            (f"<tr><td>{_e(s.study_id)}</td><td>{_e(s.lstv.pattern)}</td><td class=\"num\">{_count(s.lstv)}</td>"
             f"<td>{_flag(s.lstv.l6_present)}</td><td>{_flag(s.lstv.t13_present)}</td>"
             f"<td class=\"cand\">{_notes(s.lstv.candidates)}</td><td>{_notes(s.lstv.caveats + s.problems)}</td>"
             f"<td>{_notes(s.lstv.notes)}</td><td class=\"small\">{_e(' '.join(s.vertebrae))}</td>"
             f"<td>{links.qc(s)}</td></tr>\n" for s in candidates if s.lstv), numeric=[2])
    else:
        yield '<p class="empty">No LSTV candidates among the done studies.</p>\n'
    unassessable = report.not_assessable
    if unassessable:
        yield (f"<h3>Not assessable ({counts[NOT_ASSESSABLE]})</h3>\n<p class=\"note\">The lumbar count cannot be "
               "made from what is in view or from these labels: neither candidates nor negatives.</p>\n")
        yield from _table(["study", "pattern", "why", "caveats", "notes", "vertebrae", "QC"], (
            f"<tr><td>{_e(s.study_id)}</td><td>{_e(s.lstv.pattern)}</td><td>{_e(s.lstv.count_reason)}</td>"
            f"<td>{_notes(s.lstv.caveats + s.problems)}</td><td>{_notes(s.lstv.notes)}</td>"
            f"<td class=\"small\">{_e(' '.join(s.vertebrae))}</td>"
            f"<td>{links.a(s.outputs.get('qc'), 'QC picture')}</td></tr>\n" for s in unassessable if s.lstv))
        yield _first_of(len(unassessable), counts[NOT_ASSESSABLE])
    unknown = report.unknown
    if unknown:
        yield f"<h3>Findings unknown ({counts[UNKNOWN]})</h3>\n"
        yield from _table(["study", "problem"], (
            f"<tr><td>{_e(s.study_id)}</td><td>{_notes(s.problems + (s.lstv.notes if s.lstv else []))}</td></tr>\n"
            for s in unknown))
        yield _first_of(len(unknown), counts[UNKNOWN])
    caveats = report.caveats()
    if caveats:
        yield (f"<h3>No candidate, with caveats ({len(caveats)})</h3>\n<p class=\"note\">Counted without a "
               "candidate, but a caveat says how to read the result.</p>\n")
        yield from _table(["study", "lumbar count", "caveats", "notes", "vertebrae", "QC"], (
            f"<tr><td>{_e(s.study_id)}</td><td class=\"num\">{_count(s.lstv)}</td>"
            f"<td>{_notes(s.lstv.caveats)}</td><td>{_notes(s.lstv.notes)}</td>"
            f"<td class=\"small\">{_e(' '.join(s.vertebrae))}</td>"
            f"<td>{links.a(s.outputs.get('qc'), 'QC picture')}</td></tr>\n" for s in caveats if s.lstv), numeric=[1])
    yield "</section>\n"


def _level_check(report: Report, links: Links) -> Iterator[str]:
    """The cohort's agreement with the radiologists' levels, then every checked study, the disagreeing first."""
    summary = report.level_summary()
    counts, rate = summary["verdicts"], summary["agreement_rate"]
    yield '<section id="levels">\n<h2>Level check <span class="count">'
    yield (f"{counts['agree']} of {summary['checked']} checked studies agree ({100 * rate:.1f}%)" if rate is not None
           else "no study checked") + "</span></h2>\n"
    yield f'<p class="explain">{_e(LEVEL_CHECK_NOTE)}</p>\n'
    yield ('<p class="facts">' + " · ".join(f"{_e(k.replace('_', ' '))} <b>{v}</b>" for k, v in counts.items())
           + "</p>\n")
    ordered = report.level_order()
    if ordered:
        yield from _table(
            ["study", "verdict", "points", "matched", "shift", "max long-axis distance (mm)", "what was found",
             "points off their level", "QC"],
            (f"<tr><td>{_e(s.study_id)}</td><td><span class=\"badge {_e(s.levels.verdict)}\">{_e(s.levels.verdict)}"
             f"</span></td><td class=\"num\">{_e(s.levels.points)}</td><td class=\"num\">{_e(s.levels.matched)}</td>"
             f"<td class=\"num\">{'' if s.levels.shift is None else f'{s.levels.shift:+d}'}</td>"
             f"<td class=\"num\">{'' if s.levels.max_distance_mm is None else f'{s.levels.max_distance_mm:.1f}'}</td>"
             f"<td class=\"msg\">{_e(s.levels.reason)}</td><td>{_notes(s.levels.disagreements)}</td>"
             f"<td>{links.a(s.outputs.get('qc'), 'QC picture')}</td></tr>\n" for s in ordered if s.levels),
            numeric=[2, 3, 4, 5])
        yield _first_of(len(ordered), summary["checked"])
    else:
        yield '<p class="empty">No done study could be checked against level annotations.</p>\n'
    reasons = report.level_not_checked
    if reasons:
        yield f"<h3>Not checked ({sum(n for n, _ in reasons.values())})</h3>\n"
        yield from _table(["why", "count", "studies"], (
            f"<tr><td class=\"msg\">{_e(why)}</td><td class=\"num\">{n}</td>"
            f"<td class=\"ids\">{_ids(ids, n, 'the CSV report has every study')}</td></tr>\n"
            for why, (n, ids) in sorted(reasons.items(), key=lambda kv: -kv[1][0])), numeric=[1])
    yield "</section>\n"


def _count(lstv: LstvView) -> str:
    return _e(lstv.lumbar_count) if lstv.count_assessable else '<span class="unk">not assessable</span>'


def _file_problems(report: Report, links: Links) -> Iterator[str]:
    """Every done study whose findings are known but whose files have a problem (a label file missing, say)."""
    if not report.file_problems:
        return
    yield (f'<section id="problems">\n<h2>Done studies with problems in their files <span class="count">'
           f"{_studies(len(report.file_problems))}</span></h2>\n")
    yield from _table(["study", "LSTV", "problems", "files"], (
        f"<tr><td>{_e(s.study_id)}</td><td>{_lstv_badge(s.lstv)}</td><td>{_notes(s.problems)}</td>"
        f"<td class=\"nowrap\">{links.a(s.outputs.get('metadata'), 'metadata')}</td></tr>\n"
        for s in report.file_problems))
    yield "</section>\n"


def _error_groups(report: Report, links: Links, anchor: str, title: str, groups: list[ErrorGroup],
                  state: str) -> Iterator[str]:
    """The failed (state "failed") or skipped studies grouped by error class, then one by one: every failed
    study, the first --all-rows skipped ones."""
    yield (f'<section id="{anchor}">\n<h2>{_e(title)} <span class="count">'
           f"{_studies(report.states.get(state, 0))}</span></h2>\n")
    if not groups:
        yield f'<p class="empty">No {state} studies.</p>\n</section>\n'
        return
    if state == "failed":
        yield from _table(["error class", "count", "studies", "example message", "log"], (
            f"<tr><td><code>{_e(g.error_class)}</code><div class=\"small\">{_e(g.description)}"
            f"{'; retried' if g.retried else '; not retried'}</div></td><td class=\"num\">{g.count}</td>"
            f"<td class=\"ids\">{_ids(g.studies, g.count, 'every one is in the table below')}</td>"
            f"<td class=\"msg\">{_e(g.example)}</td><td>{links.a(g.log, 'log')}</td></tr>\n" for g in groups),
            numeric=[1])
        yield "<h3>Every failed study</h3>\n"
        yield from _table(["study", "error class", "message", "attempts", "earlier attempts", "log"], (
            f"<tr><td>{_e(s.study_id)}</td><td><code>{_e(s.error_class)}</code></td>"
            f"<td class=\"msg\">{_e(s.error_message)}</td><td class=\"num\">{s.attempts}</td>"
            f"<td class=\"small\">{_e(', '.join(s.attempt_errors[:-1]))}</td>"
            f"<td>{links.a(s.log_path, 'log')}</td></tr>\n" for s in report.failed), numeric=[3])
    else:
        yield from _table(["error class", "count", "studies"], (
            f"<tr><td><code>{_e(g.error_class)}</code><div class=\"small\">{_e(g.description)}</div></td>"
            f"<td class=\"num\">{g.count}</td>"
            f"<td class=\"ids\">{_ids(g.studies, g.count, 'the CSV report lists every one')}</td></tr>\n"
            for g in groups), numeric=[1])
        yield "<h3>Reasons</h3>\n"
        yield from _table(["study", "error class", "reason"], (
            f"<tr><td>{_e(s.study_id)}</td><td><code>{_e(s.error_class)}</code></td>"
            f"<td class=\"msg\">{_e(s.error_message)}</td></tr>\n" for s in report.skipped_studies))
        yield _first_of(len(report.skipped_studies), report.states.get("skipped", 0))
    yield "</section>\n"


def _every_study(report: Report, links: Links) -> Iterator[str]:
    """One row per study in ledger order, up to --all-rows, folded away when there are more than 300."""
    shown = report.shown
    yield (f'<section id="studies">\n<h2>All studies <span class="count">{report.total}</span></h2>\n'
           f"<details{' open' if len(shown) <= 300 else ''}><summary>one row per study, in ledger order "
           + (f"(the first {len(shown)}; " if len(shown) < report.total else "(")
           + "the CSV report holds every study and more)</summary>\n")
    yield from _table(["study", "state", "attempts", "seconds", "segmenter", "labels anatomical", "LSTV",
                       "error", "files"], (_study_row(s, links) for s in shown), numeric=[2, 3])
    yield _first_of(len(shown), report.total)
    yield "</details>\n</section>\n"


def _study_row(s: StudyEntry, links: Links) -> str:
    files = " · ".join(x for x in (links.a(s.outputs.get("qc"), "QC"), links.a(s.outputs.get("metadata"), "metadata"),
                                 links.a(s.log_path, "log")) if x)
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


def _slurm_jobs(report: Report) -> Iterator[str]:
    """The project's array jobs and their task states, when the report was made with Slurm at hand."""
    if not report.slurm_jobs:
        return
    yield '<section id="slurm">\n<h2>Slurm array jobs</h2>\n'
    yield from _table(["job", "array", "tasks"], (
        f"<tr><td>{_e(j.get('job_id'))}</td><td>{_e(j.get('array_spec', ''))}</td><td>"
        f"{_e(', '.join(f'{k} {v}' for k, v in sorted((j.get('task_states') or {}).items())) or 'unknown')}"
        "</td></tr>\n" for j in report.slurm_jobs))
    yield "</section>\n"


def _footer(report: Report) -> str:
    return (f"<footer>batchseg {_e(report.batchseg_version)} · {_e(report.generated_at)} · "
            "one file, no scripts; links are relative to this file</footer>\n</main>\n</body>\n</html>\n")


# -- writing (the I/O edge) -----------------------------------------------------------------------

def write_html(report: Report, path: Path, *, embed: bool = False) -> Path:
    """The HTML report at `path`, its links relative to `path`'s folder; `embed` inlines QC thumbnails."""
    base = Path(path).resolve().parent
    folders: dict[str, str] = {}

    def link(target: str) -> str:
        # One relpath per folder, not per file: the tables link thousands of files in a handful of folders.
        folder, name = os.path.split(target)
        if name in ("", ".", ".."):
            return relative_href(target, base)
        prefix = folders.get(folder)
        if prefix is None:
            prefix = folders[folder] = relative_href(folder, base)
        if prefix.startswith("file:"):   # no relative way there (another drive)
            return relative_href(target, base)
        return urllib.parse.quote(name) if prefix == "." else prefix + "/" + urllib.parse.quote(name)

    return write_atomic(path, render_html(report, link=link, image=embedded_thumbnail if embed else None))
