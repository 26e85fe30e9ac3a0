"""Terminal text for people: the `status` table, failure groups, one study's view, and `run`'s progress line.

Every function takes the plain dicts `Ledger.summary()`, `Ledger.study()` and `Ledger.history()`
return and gives back a string; printing is the CLI's job. `--json` prints those dicts instead.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..errors import printable
from ..ledger_summary import STATES


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
    rows = [[printable(c) for c in row] for row in rows]
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
    states = summary["states"]
    left = states["pending"] + states["running"]
    if summary["total"] and not left:
        out.append(f"finished: all {summary['total']} studies ended ({states['done']} done, {states['failed']} "
                   f"failed, {states['skipped']} skipped); nothing pending or running")
    if "throughput_per_hour" in summary:
        out.append(f"throughput {summary['throughput_per_hour']:.1f} studies/h"
                   + (f", ETA {format_duration(summary.get('eta_seconds'))}" if left else ""))
    if summary.get("leases_expired"):
        out.append(f"{summary['leases_expired']} of the {states['running']} running studies are past their lease: "
                   "their worker stopped heartbeating (the next claim, `batchseg run` or `batchseg sync` "
                   "reclaims them)")
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
    from ..executors.slurm import ENDED_STATES

    states = job.get("task_states", {})
    return not states or any(state not in ENDED_STATES for state in states)


def format_study(study: dict[str, Any], events: list[dict[str, Any]], lstv: dict[str, Any] | None = None,
                 levels: dict[str, Any] | None = None, *, now: float | None = None) -> str:
    """One study for people: its ledger row (a lease past its expiry said so), its LSTV findings and level check
    (done studies), its history; control characters escaped."""
    keys = ("study_id", "state", "attempts", "series_id", "selection_reason", "input_path", "error_class",
            "error_message", "log_path")
    out = [f"{k}: {printable(study.get(k))}" for k in keys if study.get(k) not in (None, "")]
    expires = study.get("lease_expires_at")
    if study.get("state") == "running" and expires is not None:
        late = (time.time() if now is None else now) - expires
        out.append(f"lease: expired {format_duration(late)} ago (at {_clock(expires)}): its worker stopped "
                   "heartbeating" if late > 0 else f"lease: held until {_clock(expires)}")
    if study.get("timings"):
        out.append("timings: " + ", ".join(f"{printable(k)} {v:.2f}s" for k, v in study["timings"].items()
                                           if isinstance(v, (int, float))))
    if study.get("outputs"):
        out += ["outputs:"] + [f"  {printable(k)}: {printable(v)}" for k, v in study["outputs"].items()]
    if study.get("state") == "done":
        out += ["", *(printable(line) for line in (*format_lstv(lstv), "", *format_levels(levels)))]
    rows = [[_clock(e["at"]), e["event"], f"{e['from_state'] or '-'} -> {e['to_state']}",
             worker_of(e), e.get("error_class") or "", e.get("message") or ""] for e in events]
    out += ["", "history:", table(rows, ["when", "event", "transition", "worker", "error", "message"])]
    return "\n".join(out)


def format_lstv(lstv: dict[str, Any] | None) -> list[str]:
    """The metadata's `lstv` object as lines: pattern and count first, then what qualifies them."""
    if not isinstance(lstv, dict):
        return ["lstv: unknown (metadata missing or unreadable)"]
    out = ["lstv:"]
    for key in ("pattern", "count_assessable", "lumbar_count", "count_reason"):
        if key in lstv:
            out.append(f"  {key}: {lstv[key]}")
    for key in ("candidates", "caveats", "notes"):
        items = lstv.get(key) if isinstance(lstv.get(key), list) else []
        if items:
            out.append(f"  {key}:")
            out += [f"    - {c.get('pattern')}: {c.get('evidence')}" if isinstance(c, dict) else f"    - {c}"
                    for c in items]
    if isinstance(lstv.get("sequence"), list):
        out.append("  sequence: " + " | ".join(str(n) for n in lstv["sequence"]))
    return out


def format_levels(levels: dict[str, Any] | None) -> list[str]:
    """The metadata's `levels` object (the level check) as lines: the verdict, then each annotated point."""
    if not isinstance(levels, dict):
        return ["levels: not checked (outputs made before the level check: run `batchseg levels`)"]
    out = [f"levels: {levels.get('verdict')}"]
    for key in ("points", "placed", "matched", "shift", "max_distance_mm", "reason", "source", "rows_skipped"):
        if levels.get(key) not in (None, "", 0) or key in ("points", "matched"):
            value = _signed(levels[key]) if key == "shift" else levels.get(key)
            unit = " (long-axis, mm)" if key == "max_distance_mm" else ""
            out.append(f"  {key}{unit}: {value}")
    rows = []
    for d in levels.get("details") if isinstance(levels.get("details"), list) else []:
        if not isinstance(d, dict):
            continue
        rows.append([str(d.get("level")), str(d.get("instance_number")), f"{d.get('x')}, {d.get('y')}",
                     str(d.get("status")), str(d.get("nearest_disc") or "-"), _mm(d.get("distance_long_axis_mm")),
                     _mm(d.get("distance_3d_mm")), _shorten(str(d.get("problem") or ""), 70)])
    if rows:
        out.append(_indent(table(rows, ["level", "instance", "x, y (px)", "status", "nearest disc",
                                        "long-axis mm", "3D mm", "problem"])))
    return out


def format_levels_run(studies: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """`batchseg levels` for people: one row per study, then the counts and the agreement rate."""
    rows = []
    for s in studies:
        lv = s.get("levels") or {}
        rows.append([str(s["study_id"]), str(lv.get("verdict") or "error"), str(lv.get("points", "")),
                     str(lv.get("matched", "")), _signed(lv.get("shift")), _mm(lv.get("max_distance_mm")),
                     _shorten(str(s.get("error") or lv.get("reason") or ""), 90)])
    counts = summary["verdicts"]
    rate = summary.get("agreement_rate")
    out = [table(rows, ["study", "verdict", "points", "matched", "shift", "max long-axis mm", "what"]) if rows
           else "no done study to check", "",
           ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if v or k in ("agree", "not_available")),
           (f"agreement: {counts['agree']} of {summary['checked']} checked studies ({100 * rate:.1f}%)"
            if rate is not None else "agreement: no study could be checked"),
           f"annotations: {summary['annotation_file']}" + ("" if summary["annotation_file_usable"] else
                                                            " (not usable: every study is not_available)")]
    if summary.get("metadata_rewritten") is not None:
        out.append(f"metadata rewritten: {summary['metadata_rewritten']} (levels and lstv only)")
    return "\n".join(out)


def _mm(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _signed(value: Any) -> str:
    return f"{value:+d}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def worker_of(event: dict[str, Any]) -> str:
    """Who an event's worker was: `ARRAYJOB_TASK@host` for a Slurm array task, `host:pid` for a local one."""
    return worker_label(event.get("host"), event.get("pid"), event.get("slurm_array_job_id"),
                        event.get("slurm_array_task_id"))


def worker_label(host: str | None, pid: int | None, array_job: Any, array_task: Any) -> str:
    """worker_of from the columns themselves (the report calls it once per study, without a dict each)."""
    if array_job:
        return f"{array_job}_{array_task}@{host or '?'}"
    if host:
        return f"{host}:{pid}"
    return ""


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))

