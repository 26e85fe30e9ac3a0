"""`batchseg report` on a real finished project: LSTV review table, CSV, JSON, failures, escaping, atomic writes."""
from __future__ import annotations

import base64
import dataclasses
import csv
import html
import io
import itertools
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

from batchseg.cli import cli
from batchseg.ledger import Ledger, StudyRow, WorkerInfo
from batchseg.ledger_summary import PlainReader
from batchseg.measures import measure, measure_file
from batchseg.report.model import (
    CANDIDATE,
    NO_CANDIDATE,
    NOT_ASSESSABLE,
    UNKNOWN,
    StudyFiles,
    study_entry,
)
from batchseg.report.collect import collect_report
from batchseg.outputs import findings_digest
from batchseg.synth import read_manifest, synth_dataset
from tests.conftest import batchseg
from tests.helpers import entries_both_ways

LSTV_VARIANTS = {"L6", "T13", "four_lumbar"}
CANDIDATE_PATTERN = {"L6": "lumbarization", "T13": "thoracolumbar_t13", "four_lumbar": "four_lumbar"}
BROKEN_CLASS = {"no_t2": "input.no_series", "truncated": "input.bad_dicom", "missing_folder": "input.missing"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quoted" \'single\''


# -- helpers ---------------------------------------------------------------------------------------

class StrictPage(HTMLParser):
    """Parses the page and records every nesting error, every tag, every section's tables as text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.section: str | None = None
        self.tables: dict[str, list[list[list[str]]]] = {}   # section id -> tables -> rows -> cells
        self._cell: list[str] | None = None
        self._in_head = False
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "section":
            self.section = dict(attrs).get("id")
        if tag == "table":
            self.tables.setdefault(self.section or "", []).append([])
        elif tag == "tr":
            self.tables[self.section or ""][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.errors.append(f"self-closed non-void <{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.errors.append(f"end tag for void element </{tag}>")
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self.section or ""][-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data + " ")

    def close(self) -> None:
        super().close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")


def parse_page(text: str) -> StrictPage:
    page = StrictPage()
    page.feed(text)
    page.close()
    assert page.doctype, "no <!DOCTYPE html>"
    assert page.errors == [], page.errors
    return page


def body_rows(table: list[list[str]]) -> list[list[str]]:
    return table[1:]  # the first row holds the headers


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def copy_project(finished: Path, to: Path) -> Path:
    project = to / "copy"
    shutil.copytree(finished, project)
    for stale in ("report.html", "report.csv"):
        (project / stale).unlink(missing_ok=True)
    return project


# -- the finished project ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report-synth") / "data"
    synth_dataset(root, 8, seed=5, matrix=64)
    return root


@pytest.fixture(scope="module")
def finished(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("report-project")
    batchseg("init", "--project", str(project), "--dataset", str(dataset),
             "--studies", str(dataset / "study_ids.txt"), "--segmenter", "reference")
    batchseg("run", "--project", str(project), "--workers", "2", check=False)
    return project


@pytest.fixture(scope="module")
def manifest(dataset: Path) -> dict[str, Any]:
    return read_manifest(dataset)["studies"]


@pytest.fixture(scope="module")
def reported(finished: Path) -> tuple[StrictPage, str, list[dict[str, str]]]:
    """The real command line: the HTML at its default place, then the CSV."""
    out = batchseg("report", "--project", str(finished))
    assert "report.html" in out.stdout
    batchseg("report", "--project", str(finished), "--csv", str(finished / "report.csv"))
    text = (finished / "report.html").read_text(encoding="utf-8")
    with (finished / "report.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return parse_page(text), text, rows


def expected_candidates(manifest: dict[str, Any]) -> set[str]:
    return {sid for sid, info in manifest.items() if not info["broken"] and info["variant"] in LSTV_VARIANTS}


# -- tests -----------------------------------------------------------------------------------------

def test_lstv_table_flags_exactly_the_transitional_phantoms(reported: Any, manifest: dict[str, Any]) -> None:
    page, _, _ = reported
    wanted = expected_candidates(manifest)
    assert {manifest[s]["variant"] for s in wanted} == LSTV_VARIANTS, "the dataset must hold every variant"
    table = page.tables["lstv"][0]
    assert table[0][:5] == ["study", "pattern", "lumbar count", "L6 present", "T13 present"]
    rows = {row[0]: row for row in body_rows(table)}
    assert set(rows) == wanted
    for sid, row in rows.items():
        variant = manifest[sid]["variant"]
        assert row[1] == CANDIDATE_PATTERN[variant]
        assert row[2] == {"L6": "6", "four_lumbar": "4"}.get(variant, "5")
        assert row[3] == ("yes" if variant == "L6" else "no")
        assert row[4] == ("yes" if variant == "T13" else "no")
        assert row[5].startswith(CANDIDATE_PATTERN[variant] + ": ")
    # Every candidate carries a QC thumbnail and a link to the full picture, both relative.
    thumbs = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(thumbs) == len(wanted)
    assert all(not attrs["src"].startswith(("/", "http", "file:")) for attrs in thumbs)


def test_csv_has_one_row_per_study_matching_the_manifest(reported: Any, manifest: dict[str, Any]) -> None:
    _, _, rows = reported
    by_id = {row["study_id"]: row for row in rows}
    assert set(by_id) == set(manifest) and len(rows) == len(manifest)
    for sid, info in manifest.items():
        row = by_id[sid]
        if info["broken"]:
            assert row["error_class"] == BROKEN_CLASS[info["broken"]]
            assert row["state"] == ("skipped" if info["broken"] == "no_t2" else "failed")
            assert row["lstv_status"] == "" and row["l6_present"] == "" and row["qc"] == ""
            assert row["pattern"] == row["count_assessable"] == ""
            continue
        variant = info["variant"]
        assert row["state"] == "done" and row["error_class"] == ""
        assert row["labels_anatomical"] == "true" and row["segmenter"] == "reference"
        assert row["pattern"] == info["expected_lstv"]["pattern"]
        assert row["count_assessable"] == str(info["expected_lstv"]["count_assessable"]).lower()
        if variant == "top_L2":
            assert row["lstv_status"] == NOT_ASSESSABLE and row["lumbar_count"] == ""
            assert row["count_reason"] == "thoracolumbar junction (T12/L1) not in view: top vertebra L2"
            assert row["lstv_caveats"].startswith("lumbar count not assessable")
            continue
        assert row["lstv_status"] == (CANDIDATE if variant in LSTV_VARIANTS else NO_CANDIDATE)
        assert row["lumbar_count"] == str({"L6": 6, "four_lumbar": 4}.get(variant, 5))
        assert row["count_reason"] == ""
        # The level check's caveat: only the shifted study (synth.py shifts the L6 study's annotations).
        assert row["lstv_caveats"] == "" if info["expected_levels"]["verdict"] == "agree" else \
            row["lstv_caveats"].startswith("level check: shifted")
        assert row["l6_present"] == str(variant == "L6").lower()
        assert row["t13_present"] == str(variant == "T13").lower()
        assert bool(row["candidates"]) == (variant in LSTV_VARIANTS)
        assert float(row["seconds"]) > 0
        assert row["vertebrae"].split("; ")[-1] == "S1"
        for name in ("nifti", "vert_mask", "centroids", "vertebra_labels", "qc", "metadata"):
            assert Path(row[name]).is_file(), (sid, name)


def test_failures_and_skipped_listed_with_their_classes(reported: Any, manifest: dict[str, Any]) -> None:
    page, _, rows = reported
    broken = {info["broken"]: sid for sid, info in manifest.items() if info["broken"]}
    failures = {row[0].split()[0]: row for row in body_rows(page.tables["failures"][0])}
    assert set(failures) == {"input.bad_dicom", "input.missing"}
    assert failures["input.bad_dicom"][2] == broken["truncated"]
    assert broken["truncated"] in failures["input.bad_dicom"][3]
    assert failures["input.missing"][2] == broken["missing_folder"]
    skipped_groups, reasons = page.tables["skipped"]
    assert [r[0].split()[0] for r in body_rows(skipped_groups)] == ["input.no_series"]
    [reason] = body_rows(reasons)
    assert reason[0] == broken["no_t2"] and "no Sagittal T2/STIR" in reason[2]
    log = next(r for r in rows if r["study_id"] == broken["truncated"])["log_path"]
    assert Path(log).is_file()


def test_csv_alone_writes_no_html_and_the_page_stops_at_all_rows(finished: Path, manifest: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    project = copy_project(finished, tmp_path)
    out = invoke("report", "--project", str(project), "--csv", str(project / "r.csv"))
    assert not (project / "report.html").exists(), "--csv alone writes no HTML"
    assert "r.csv" in out.stdout
    invoke("report", "--project", str(project), "--all-rows", "2")
    page = parse_page((project / "report.html").read_text(encoding="utf-8"))
    assert len(body_rows(page.tables["studies"][0])) == 2, "the all-studies table stops at --all-rows"
    text = (project / "report.html").read_text(encoding="utf-8")
    assert f"The first 2 of {len(manifest)}" in text and "--csv FILE" in text
    # Failures and LSTV candidates are listed in full whatever --all-rows says.
    assert {row[0] for row in body_rows(page.tables["lstv"][0])} == expected_candidates(manifest)
    assert len(body_rows(page.tables["failures"][1])) == 2


def test_page_is_self_contained_and_links_resolve(reported: Any, finished: Path, tmp_path: Path) -> None:
    page, text, _ = reported
    assert "<script" not in text.lower()
    targets = [attrs.get("href") or attrs.get("src") for tag, attrs in page.tags if tag in ("a", "img", "link")]
    assert targets
    for target in targets:
        assert target and not target.startswith(("http:", "https:", "//", "file:", "/")), target
        if not target.startswith("#"):
            assert (finished / unquote(target)).is_file(), target
    # Elsewhere, the links still reach the same files.
    elsewhere = tmp_path / "deep" / "er" / "review.html"
    invoke("report", "--project", str(finished), "--html", str(elsewhere))
    moved = parse_page(elsewhere.read_text(encoding="utf-8"))
    for tag, attrs in moved.tags:
        if tag == "a" and not attrs["href"].startswith("#"):
            assert (elsewhere.parent / unquote(attrs["href"])).is_file(), attrs["href"]


def test_embed_inlines_qc_thumbnails(finished: Path, manifest: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "embedded.html"
    invoke("report", "--project", str(finished), "--html", str(out), "--embed")
    page = parse_page(out.read_text(encoding="utf-8"))
    sources = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(sources) == len(expected_candidates(manifest))
    for src in sources:
        assert src.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            assert image.format == "JPEG" and 0 < image.height <= 150


def test_json_on_stdout_matches_the_csv(finished: Path, manifest: dict[str, Any], tmp_path: Path) -> None:
    project = copy_project(finished, tmp_path)
    result = invoke("report", "--project", str(project), "--json")
    data = json.loads(result.stdout)
    assert not (project / "report.html").exists(), "--json alone writes no HTML"
    assert set(data["lstv_candidates"]) == expected_candidates(manifest)
    assert data["lstv_not_assessable"] == [sid for sid, i in manifest.items()
                                           if not i["broken"] and i["variant"] == "top_L2"]
    assert data["lstv_with_caveats"] == []
    assert data["total"] == len(manifest) and data["states"]["done"] == len(manifest) - 3
    assert {g["error_class"] for g in data["failures"]} == {"input.bad_dicom", "input.missing"}
    by_id = {s["study_id"]: s for s in data["studies"]}
    for sid, info in manifest.items():
        if not info["broken"]:
            assert by_id[sid]["lstv"]["l6_present"] == (info["variant"] == "L6")


def test_hostile_values_are_escaped(finished: Path, tmp_path: Path) -> None:
    project = copy_project(finished, tmp_path)
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    # A study id that is not a number reaches the ledger as input.bad_id, and so the report.
    ledger.add_studies([StudyRow(study_id=HOSTILE, skip_class="input.bad_id", skip_message=f"study {HOSTILE}"),
                        StudyRow(study_id="4242", series_id="1", input_path=str(tmp_path / "nowhere")),
                        StudyRow(study_id="4343", series_id="2", input_path=str(tmp_path / "nowhere"))])
    claim = ledger.claim(WorkerInfo.from_environment(), 60)
    assert claim is not None and claim.study_id == "4242"
    assert ledger.fail(claim, "input.bad_dicom", f"study 4242: {HOSTILE}", log_path=str(tmp_path / "a&b.log")) \
        == "failed"
    with ledger.engine.begin() as conn:   # the run's first study done two minutes before the others: a rate
        conn.exec_driver_sql("UPDATE history SET at = at - 120 WHERE event = 'done' AND study_id = "
                             "(SELECT study_id FROM history WHERE event = 'done' ORDER BY at LIMIT 1)")
    ledger.close()
    out = project / "report.html"
    invoke("report", "--project", str(project), "--html", str(out), "--csv", str(project / "r.csv"))
    text = out.read_text(encoding="utf-8")
    page = parse_page(text)
    assert HOSTILE not in text and "<script" not in text.lower()
    assert html.escape(HOSTILE, quote=True) in text
    assert [tag for tag, _ in page.tags if tag == "img"] == ["img"] * len(page.tables["lstv"][0][1:]), \
        "only QC thumbnails are images: the hostile <img> stayed text"
    assert not any("onerror" in attrs for _, attrs in page.tags)
    failures = {row[0].split()[0]: row for row in body_rows(page.tables["failures"][0])}
    assert "4242" in failures["input.bad_dicom"][2].split()
    with (project / "r.csv").open(newline="", encoding="utf-8") as handle:
        rows = {r["study_id"]: r for r in csv.DictReader(handle)}
    assert rows[HOSTILE]["error_class"] == "input.bad_id"
    assert rows["4242"]["error_message"] == f"study 4242: {HOSTILE}"
    assert rows["4242"]["attempt_errors"] == "input.bad_dicom" and rows["4242"]["worker"]
    # One study still pending, and studies were done within the hour: the page gives an ETA.
    assert rows["4343"]["state"] == "pending"
    assert "ETA <b>" in text and "for 1 study<" in text


def test_unassessed_and_unreadable_studies_are_never_negatives(finished: Path, manifest: dict[str, Any],
                                                               tmp_path: Path) -> None:
    project = copy_project(finished, tmp_path)
    good = sorted(sid for sid, info in manifest.items() if not info["broken"])
    unlabelled, missing, corrupt = good[0], good[1], good[2]
    meta_dir = project / "results" / "metadata"
    # What the pipeline writes for a segmenter without its labeling model (SPINEPS labeling off).
    path = meta_dir / f"{unlabelled}_metadata.json"
    meta = json.loads(path.read_text())
    labels = [int(k) for k in json.loads((project / "results" / "centroids" /
                                          f"{unlabelled}_vertebra_labels.json").read_text())]
    meta["segmenter"]["labels_anatomical"] = False
    vert = project / "results" / "segmentations" / f"{unlabelled}_seg-vert_msk.nii.gz"
    meta["lstv"] = measure_file(vert, labels_anatomical=False).lstv_json()
    assert labels
    path.write_text(json.dumps(meta))
    (meta_dir / f"{missing}_metadata.json").unlink()
    (meta_dir / f"{corrupt}_metadata.json").write_text("{not json")

    invoke("report", "--project", str(project), "--html", str(project / "report.html"), "--csv",
           str(project / "r.csv"))
    page = parse_page((project / "report.html").read_text(encoding="utf-8"))
    lstv_tables = page.tables["lstv"]
    flagged = {row[0] for row in body_rows(lstv_tables[0])} if lstv_tables[0][0][0] == "study" else set()
    assert not flagged & {unlabelled, missing, corrupt}
    cells = {row[0]: row for table in lstv_tables[1:] for row in body_rows(table)}
    assert cells[unlabelled][1] == "not_assessable" and cells[unlabelled][2].startswith("labels not anatomical")
    assert "metadata missing" in cells[missing][1] and "metadata unreadable" in cells[corrupt][1]
    with (project / "r.csv").open(newline="", encoding="utf-8") as handle:
        rows = {r["study_id"]: r for r in csv.DictReader(handle)}
    assert rows[unlabelled]["lstv_status"] == NOT_ASSESSABLE and rows[unlabelled]["labels_anatomical"] == "false"
    assert rows[missing]["lstv_status"] == UNKNOWN and rows[corrupt]["lstv_status"] == UNKNOWN
    for sid in (unlabelled, missing, corrupt):
        assert rows[sid]["l6_present"] == rows[sid]["t13_present"] == rows[sid]["lumbar_count"] == ""


def test_label_126_alone_is_no_candidate() -> None:
    """A disc above the top vertebra (126) is an informational note, never sacralization and never a caveat."""
    from tests.label_maps import AFFINE, spine_map, stack

    labels = stack("126", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
    findings = measure(spine_map(labels), AFFINE)
    files = StudyFiles(metadata_path="m.json", segmenter={"name": "spineps", "labels_anatomical": True},
                       lstv=findings.lstv_json(), vertebra_labels=findings.vertebra_labels_json())
    entry = study_entry({"study_id": "1", "state": "done", "attempts": 1}, files)
    assert entry.lstv is not None and entry.lstv.status == NO_CANDIDATE and entry.lstv.candidates == []
    assert entry.lstv.pattern == "normal" and entry.lstv.lumbar_count == 5 and entry.lstv.caveats == []
    assert any("126" in note and "not an S1-S2" in note for note in entry.lstv.notes)
    assert entry.problems == []


def test_not_assessable_apart_and_caveats_only_with_a_caveat(finished: Path, manifest: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """Not assessable is its own list; "with caveats" holds a counted study only when a caveat says so."""
    project = copy_project(finished, tmp_path)
    by_variant = {info["variant"]: sid for sid, info in manifest.items() if not info["broken"]}
    # The normal study, with a stray fragment of L3: counted, no candidate, one caveat.
    fragment = by_variant["normal"]
    path = project / "results" / "metadata" / f"{fragment}_metadata.json"
    meta = json.loads(path.read_text())
    meta["lstv"]["caveats"] = ["L3 (22) in 2 pieces: 1 fragment (3 voxels) apart from the main piece"]
    path.write_text(json.dumps(meta))
    data = json.loads(invoke("report", "--project", str(project), "--json").stdout)
    assert data["lstv_with_caveats"] == [fragment]
    assert data["lstv_not_assessable"] == [by_variant["top_L2"]]
    assert data["lstv_counts"] == {CANDIDATE: 3, NO_CANDIDATE: 1, NOT_ASSESSABLE: 1, UNKNOWN: 0}
    invoke("report", "--project", str(project))
    page = parse_page((project / "report.html").read_text(encoding="utf-8"))
    candidates, unassessable, caveats = page.tables["lstv"]
    assert [r[0] for r in body_rows(unassessable)] == [by_variant["top_L2"]]
    assert unassessable[0][:3] == ["study", "pattern", "why"]
    assert [r[0] for r in body_rows(caveats)] == [fragment] and "fragment" in body_rows(caveats)[0][2]
    assert by_variant["top_L2"] not in {r[0] for r in body_rows(candidates) + body_rows(caveats)}


def test_odd_or_older_findings_are_unknown_never_negative() -> None:
    from batchseg.report.model import lstv_view

    older = {"assessed": True, "lumbar_count": 5, "l6_present": False, "t13_present": False, "candidates": [],
             "notes": []}
    assert lstv_view(older, True).status == UNKNOWN
    assert lstv_view({"pattern": "normal", "count_assessable": "yes"}, True).status == UNKNOWN
    odd = {"pattern": "normal", "count_assessable": True, "lumbar_count": "5", "candidates": ["x", 3],
           "caveats": "not a list", "notes": [1, "n"]}
    view = lstv_view(odd, True)
    assert view.status == NO_CANDIDATE and view.lumbar_count is None and view.caveats == [] and view.notes == ["n"]
    # Counted findings from a segmenter whose labels are only an order do not stand.
    forced = lstv_view({"pattern": "normal", "count_assessable": True, "lumbar_count": 5}, False)
    assert forced.status == NOT_ASSESSABLE and forced.lumbar_count is None


def test_one_ledger_read_for_the_whole_report(finished: Path) -> None:
    from batchseg.config import load_config

    calls: list[str] = []
    config = load_config(finished)
    ledger = Ledger.for_config(config)

    class Counting:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(ledger, name)

    report = collect_report(config, Counting(), keep_all=True)
    ledger.close()
    assert sorted(calls) == ["report_rows", "summary"]
    assert len(report.studies) == report.total


def test_the_report_reads_the_ledger_s_digest_and_it_says_what_the_files_say(
        finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    both = entries_both_ways(finished)
    assert len(both) >= 5
    for study, (digested, from_files) in both.items():
        assert digested is not None and digested == from_files, study
    # The whole report without opening one study's files: the same CSV as from the files.
    from batchseg.report import collect

    monkeypatch.setattr(collect, "read_study_files", lambda *a: pytest.fail("a study's files were read"))
    invoke("report", "--project", str(finished), "--csv", str(tmp_path / "digest.csv"))
    monkeypatch.undo()
    monkeypatch.setattr(collect, "files_from_digest", lambda *a: None)
    invoke("report", "--project", str(finished), "--csv", str(tmp_path / "files.csv"))
    assert (tmp_path / "digest.csv").read_bytes() == (tmp_path / "files.csv").read_bytes()


def test_a_digest_is_never_believed_once_its_files_changed(finished: Path, manifest: dict[str, Any],
                                                           tmp_path: Path) -> None:
    project = copy_project(finished, tmp_path)
    results = project / "results"
    # A copy is other files (other inodes): no digest holds until it is made again for them.
    assert all(digested is None for digested, _ in entries_both_ways(project).values())
    good = sorted(sid for sid, info in manifest.items() if not info["broken"])
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    ledger.record_findings({sid: findings_digest(results, sid) for sid in good})
    ledger.close()
    assert all(digested == from_files for digested, from_files in entries_both_ways(project).values())

    def count(study: str) -> Any:
        return json.loads((results / "metadata" / f"{study}_metadata.json").read_text())["lstv"]["lumbar_count"]

    in_place = next(sid for sid in good if count(sid) in (4, 5, 6))
    rewritten, removed = [sid for sid in good if sid != in_place][:2]
    meta = json.loads((results / "metadata" / f"{rewritten}_metadata.json").read_text())
    meta["lstv"]["notes"] = ["a note written after the run"]
    (results / "metadata" / f"{rewritten}_metadata.json").write_text(json.dumps(meta))
    # An edit in place: the same inode, the same size, only the modification time tells.
    path = results / "metadata" / f"{in_place}_metadata.json"
    text = path.read_text()
    before = path.stat()
    counted = count(in_place)
    assert f'"lumbar_count": {counted}' in text
    with path.open("r+", encoding="utf-8") as handle:
        handle.write(text.replace(f'"lumbar_count": {counted}', f'"lumbar_count": {9 - counted}'))
    after = path.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert after.st_mtime_ns != before.st_mtime_ns
    (results / "centroids" / f"{removed}_vertebra_labels.json").unlink()

    both = entries_both_ways(project)
    for study in (rewritten, in_place, removed):
        assert both[study][0] is None, study
    invoke("report", "--project", str(project), "--csv", str(project / "r.csv"))
    with (project / "r.csv").open(newline="", encoding="utf-8") as handle:
        rows = {r["study_id"]: r for r in csv.DictReader(handle)}
    assert rows[rewritten]["lstv_notes"] == "a note written after the run"
    assert rows[in_place]["lumbar_count"] == str(9 - counted)
    assert "vertebra labels missing" in rows[removed]["problems"] and rows[removed]["vertebrae"] == ""


def test_an_older_ledger_gets_the_findings_column(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    Ledger(url).close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:   # the ledger as batchseg 0.1.0 made it
        conn.execute("ALTER TABLE studies DROP COLUMN findings")
        conn.execute("DELETE FROM meta WHERE key = 'findings'")
    ledger = Ledger(url)
    ledger.add_studies([StudyRow("1", "1", "sagittal T2", "/data/1/1", "only series")])
    claim = ledger.claim(WorkerInfo.from_environment({}), 60)
    assert claim is not None and ledger.complete(claim, {}, {"total": 1.0}, '{"id": []}')
    assert ledger.study("1")["findings"] == {"id": []}
    ledger.close()


def test_unwritable_target_is_a_one_line_error(finished: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["report", "--project", str(finished), "--html", str(blocker / "r.html")])
    assert result.exit_code == 1
    assert "cannot write" in result.stderr and "Traceback" not in result.output


def test_status_says_when_pending_studies_have_no_task_left() -> None:
    from batchseg.report.status_text import format_status

    summary = {"total": 3, "states": {"pending": 2, "running": 0, "done": 1, "failed": 0, "skipped": 0},
               "failures": [], "skipped": [], "attempts": 1}
    ended = [{"job_id": "40", "array_spec": "0-3%2", "task_states": {"COMPLETED": 3, "TIMEOUT": 1}}]
    assert "submit --array` again" in format_status(summary, jobs=ended)
    running = [{"job_id": "41", "array_spec": "0-3", "task_states": {"RUNNING": 1, "COMPLETED": 3}}]
    assert "again" not in format_status(summary, jobs=running)


def test_odd_result_files_never_crash_the_report(finished: Path, manifest: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    project = copy_project(finished, tmp_path)
    good = sorted(sid for sid, info in manifest.items() if not info["broken"])
    typed, digits, deep = good[0], good[1], good[2]
    results = project / "results"
    path = results / "metadata" / f"{typed}_metadata.json"
    meta = json.loads(path.read_text())
    meta["lstv"] = {"candidates": 5, "lumbar_count": "five", "l6_present": "yes", "t13_present": [1],
                    "notes": {"n": 1}}
    meta["timings"] = {"total": "slow"}
    path.write_text(json.dumps(meta))
    labels = results / "centroids" / f"{digits}_vertebra_labels.json"
    labels.write_text(json.dumps({"²⁰": "L1", "٢١": "L2", "9" * 5000: "L3", "20": "L1"}))
    (results / "metadata" / f"{deep}_metadata.json").write_text("[" * 200000 + "]" * 200000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # every QC picture is now over Pillow's limit

    invoke("report", "--project", str(project), "--embed", "--html", str(project / "report.html"),
           "--csv", str(project / "r.csv"))
    page = parse_page((project / "report.html").read_text(encoding="utf-8"))
    assert page.tables["lstv"]
    with (project / "r.csv").open(newline="", encoding="utf-8") as handle:
        rows = {r["study_id"]: r for r in csv.DictReader(handle)}
    assert rows[typed]["lstv_status"] == UNKNOWN and "lstv.candidates is int" in rows[typed]["problems"]
    assert rows[typed]["lumbar_count"] == rows[typed]["l6_present"] == ""
    assert rows[digits]["vertebrae"] == "L1"
    assert rows[deep]["lstv_status"] == UNKNOWN and "RecursionError" in rows[deep]["problems"]


def test_csv_cells_are_never_formulas_and_rejected_ids_stay_escaped(finished: Path, tmp_path: Path) -> None:
    from batchseg.dataset import build_inventory

    project = copy_project(finished, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train_series_descriptions.csv").write_text("study_id,series_id,series_description\n")
    rejected = build_inventory(data, study_list=["=HYPERLINK(\"http://x\",\"y\")\x1b[31m", "@SUM(A1)"]).rows
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    ledger.add_studies([*rejected, StudyRow(study_id="4242", series_id="1")])
    claim = ledger.claim(WorkerInfo.from_environment(), 60)
    ledger.fail(claim, "input.bad_dicom", "-2+3 =cmd|' /C calc'!A0")
    ledger.close()
    assert [r.study_id for r in rejected] == ['=HYPERLINK("http://x","y")\\x1b[31m', "@SUM(A1)"], \
        "rejected ids are stored escaped"
    invoke("report", "--project", str(project), "--csv", str(project / "r.csv"))
    with (project / "r.csv").open(newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    formulas = [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert formulas == [], formulas
    assert "'-2+3 =cmd|' /C calc'!A0" in cells and "'@SUM(A1)" in cells


# -- the report read in runs, by several processes ------------------------------------------------

def _entries(project: Path) -> list[Any]:
    from batchseg.config import load_config
    from batchseg.report.collect import study_entries

    ledger = Ledger.for_config(load_config(project))
    entries = list(study_entries(project / "results", ledger))
    ledger.close()
    return entries


def _kept(builder: Any) -> Any:
    """What a builder keeps, with each entry as its study id."""
    def ids(entries: list[Any]) -> list[str]:
        return [e.study_id for e in entries]

    return (ids(builder.shown), {k: ids(v) for k, v in builder.lists.items()},
            {k: ids(v) for k, v in builder.level_lists.items()}, builder.lstv_totals, builder.level_verdicts,
            builder.level_not_checked, builder.segmenters, builder.versions,
            None if builder.everything is None else ids(builder.everything))


def test_builders_of_consecutive_runs_merge_into_the_builder_of_the_whole(
        finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchseg.report import model
    from batchseg.report.model import ReportBuilder

    monkeypatch.setattr(model, "NOT_CHECKED_IDS", 2)
    entries = _entries(finished)
    # Three times the studies, so that runs hold several studies of each kind, and levels not checked.
    unchecked = [dataclasses.replace(e, levels=model.LevelView("not_available", reason=f"why {i % 2}"))
                 for i, e in enumerate(entries) if e.levels]
    entries = [*entries, *unchecked, *entries, *unchecked, *entries]
    for all_rows in (0, 2, 5, 3000):
        whole = ReportBuilder(all_rows, keep_all=True)
        for entry in entries:
            whole.add(entry)
        for cuts in ([1], [4], [len(entries) - 1], [2, 9, 17], [0, len(entries)]):
            bounds = [0, *cuts, len(entries)]
            builders = []
            for lo, hi in zip(bounds, bounds[1:]):
                builder = ReportBuilder(all_rows, keep_all=True)
                for entry in entries[lo:hi]:
                    builder.add(entry)
                builders.append(builder)
            for later in builders[1:]:
                builders[0].merge(later)
            assert _kept(builders[0]) == _kept(whole), (all_rows, cuts)


def test_the_report_read_by_several_processes_is_the_single_pass_report(finished: Path, tmp_path: Path) -> None:
    from batchseg.config import load_config
    from batchseg.report.model import report_json

    project = copy_project(finished, tmp_path)
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    ledger.record_findings({sid: findings_digest(project / "results", sid)
                            for sid, state in ledger_states(ledger).items() if state == "done"})
    failed = next(sid for sid, state in ledger_states(ledger).items() if state == "failed")
    assert ledger.retry_failed(study_ids=[failed]) == [failed]   # its seq moves to the back of the queue
    ledger.close()
    config = load_config(project)
    made = {}
    # Through the Ledger and through the plain sqlite3 reader (`report` on a current local SQLite ledger).
    for processes, opener in itertools.product((1, 2, 3, 9), (Ledger.for_config, PlainReader.for_config)):
        ledger = opener(config)
        csv_path = tmp_path / f"p{processes}.csv"
        report = collect_report(config, ledger, now=0.0, all_rows=2, keep_all=True, csv_path=csv_path,
                                processes=processes)
        ledger.close()
        made[processes, opener] = (report_json(report), csv_path.read_bytes(), [s.study_id for s in report.shown])
    first = made[1, Ledger.for_config]
    assert first[0]["total"] == 8 and first[2] == [s.study_id for s in _entries(project)][:2]
    assert all(made[n] == first for n in made)
    for processes in (1, 3):   # the CSV alone (`report --csv`): the same rows, no report built
        ledger = PlainReader.for_config(config)
        csv_path = tmp_path / f"alone{processes}.csv"
        assert collect_report(config, ledger, csv_path=csv_path, processes=processes, page=False) is None
        ledger.close()
        assert csv_path.read_bytes() == first[1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "part files left behind"


def ledger_states(ledger: Ledger) -> dict[str, str]:
    return {row["study_id"]: row["state"] for row in ledger.report_rows()}


def test_report_runs_cover_the_queue_once_in_order(finished: Path, tmp_path: Path) -> None:
    project = copy_project(finished, tmp_path)
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    order = [row["study_id"] for row in ledger.report_rows()]
    done = sum(row["state"] == "done" for row in ledger.report_rows())
    assert done >= 4
    for parts in (1, 2, 3, 4, 7, 8, 50):
        cuts = ledger.report_cuts(parts)
        assert cuts == sorted(set(cuts)) and len(cuts) == (parts - 1 if done >= parts else 0)
        runs = list(zip([None, *cuts], [*cuts, None]))
        assert [row["study_id"] for lo, hi in runs for row in ledger.report_rows(first_seq=lo, end_seq=hi)] == order
        # Each run holds about as many done studies (the work), wherever the pending studies sit.
        per_run = [sum(r["state"] == "done" for r in ledger.report_rows(first_seq=lo, end_seq=hi)) for lo, hi in runs]
        assert max(per_run) - min(per_run) <= 1, (parts, per_run)
    ledger.close()
    empty = Ledger(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert empty.report_cuts(4) == [] and list(empty.report_rows()) == []
    empty.close()


def test_a_run_that_fails_leaves_no_csv_and_no_part_file(finished: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from batchseg.config import load_config
    from batchseg.report import collect

    project = copy_project(finished, tmp_path)
    last = _entries(project)[-1].study_id

    def broken(row: dict[str, Any], files: Any) -> Any:
        if row["study_id"] == last:
            raise OSError(28, "No space left on device")
        return study_entry(row, files)

    monkeypatch.setattr(collect, "study_entry", broken)   # the forked processes have it too
    config = load_config(project)
    out = tmp_path / "out"
    for processes in (1, 3):
        ledger = Ledger.for_config(config)
        with pytest.raises(OSError, match="No space left"):
            collect_report(config, ledger, csv_path=out / "r.csv", processes=processes)
        ledger.close()
        assert list(out.iterdir()) == []


def test_output_paths_past_the_csv_module_are_what_it_writes(finished: Path, tmp_path: Path) -> None:
    from batchseg.outputs import OutputPaths, _layout_template
    from batchseg.report.csv_rows import render_csv

    entries = [e for e in _entries(finished) if e.outputs]
    assert entries and all(isinstance(e.outputs, OutputPaths) for e in entries)
    # Results folders the csv module must quote, or neutralise (a leading "-"), and odd ids.
    for folder in (Path("/r"), tmp_path / 'a,b "q"', Path("-x"), Path("=y") / "z", tmp_path / "line\nend"):
        template = _layout_template(str(folder))
        odd = []
        for e in entries:
            for study_id in (e.study_id, "a,b", 'q"q', "1"):
                copy = dataclasses.replace(e, study_id=study_id)
                copy.outputs = OutputPaths(template, study_id, e.outputs.names)
                odd.append(copy)
        odd.append(dataclasses.replace(entries[0], outputs=OutputPaths(template, "1", ["metadata"])))
        odd.append(dataclasses.replace(entries[0], outputs={"nifti": "/a,b/1.nii.gz"}))
        odd.append(dataclasses.replace(entries[0], outputs={}))
        expected = io.StringIO()
        writer = csv.writer(expected, lineterminator="\n")
        for e in odd:
            writer.writerow(_plain_row(e))
        assert "".join(render_csv(odd)) == expected.getvalue(), folder


def _reference_cell(value: Any) -> str:
    """What the CSV's rules make of a value, written plainly: None blank, flags as words, lists joined with "; ",
    text that a spreadsheet would run as a formula (and is no number) behind an apostrophe."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "; ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not isinstance(value, (int, float)):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def _plain_row(entry: Any) -> list[str]:
    """One study's CSV row by the plain rules (_reference_cell), every column in CSV_FIELDS order."""
    from batchseg.outputs import OUTPUT_NAMES
    from batchseg.report.csv_rows import CSV_FIELDS

    lstv, levels = entry.lstv, entry.levels
    plain = [entry.study_id, entry.series_id, entry.state, entry.attempts, entry.error_class, entry.error_message,
             entry.log_path, entry.seconds, entry.attempt_seconds, entry.attempt_errors, entry.worker,
             entry.segmenter, entry.labels_anatomical]
    plain += ([lstv.status, lstv.pattern, lstv.count_assessable, lstv.count_reason, lstv.lumbar_count,
               lstv.l6_present, lstv.t13_present, lstv.candidates, lstv.caveats, lstv.notes] if lstv
              else [""] + [None] * 9)
    plain += ([levels.verdict, levels.points, levels.matched, levels.shift, levels.max_distance_mm, levels.reason]
              if levels else [""] + [None] * 5)
    plain += [entry.vertebrae, entry.problems, *(entry.outputs.get(name) for name in OUTPUT_NAMES)]
    assert len(plain) == len(CSV_FIELDS)
    return [_reference_cell(v) for v in plain]


def test_csv_rows_are_what_the_plain_rules_make_of_every_value(finished: Path) -> None:
    """render_csv neutralises a row's cells only when the written row shows a cell that could start like a
    formula: its rows are still the plain rules' for odd values in every column."""
    from batchseg.report.csv_rows import render_csv
    from batchseg.report.model import LevelView

    texts = ["", "plain", "=1+1", "-1.5", "-x", "@a", "\tx", "\rx", "+inf", 'a,"=b', "a,=b", 'q"q', "x\ny", "a\rb",
             "1,-2"]
    lists = [[], ["a", "=b"], [1, 2.5], ["-c"], ["x", "y", "@z"], ["a,b", "-1"]]
    numbers = [0, 7, -3, 1.5, -1.5, float("inf"), float("-inf"), 10**20]
    base = [e for e in _entries(finished) if e.lstv is not None and e.outputs]
    assert base
    odd = []
    for i, (text, items, number) in enumerate(itertools.product(texts, lists, numbers)):
        e = base[i % len(base)]
        flag = (None, True, False)[i % 3]
        lstv = dataclasses.replace(e.lstv, count_reason=text, lumbar_count=number, candidates=items,
                                   caveats=items[::-1], notes=[text], l6_present=flag)
        levels = LevelView(text or "agree", points=number, shift=-1 if i % 2 else 1, max_distance_mm=number,
                           reason=text)
        odd.append(dataclasses.replace(
            e, study_id=text or "s", series_id=text, error_message=text, log_path=text, seconds=number,
            attempt_seconds=number, attempt_errors=items, worker=text, segmenter=text, labels_anatomical=flag,
            lstv=lstv, levels=levels, vertebrae=items, problems=items[::-1]))
    odd.append(dataclasses.replace(base[0], lstv=None, levels=None, outputs={}))
    odd.append(dataclasses.replace(base[0], study_id="=d", outputs={"nifti": "-a/1.nii.gz"}))   # no OutputPaths
    odd.append(dataclasses.replace(base[0], study_id="@only"))   # the first cell alone
    odd.append(dataclasses.replace(base[0], error_message="a\rb"))   # a "\r" alone
    written = list(csv.reader(io.StringIO("".join(render_csv(odd)), newline="")))
    assert len(written) == len(odd)
    for entry, row in zip(odd, written):
        assert row == _plain_row(entry), entry.study_id
    cells = {cell for row in written for cell in row}
    assert {"'=1+1", "-1.5", "'-x", 'a,"=b', "-3", "-inf", "a; =b", "'-c", "1; 2.5", "true", "false", "'=d",
            "'-a/1.nii.gz", "'@only", "a\rb"} <= cells
