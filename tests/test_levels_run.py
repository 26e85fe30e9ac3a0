"""The level check end to end on the synthetic dataset: `batchseg run` with the annotations, without them,
then `batchseg levels` once they arrive; the report, the CSV, `status --study`; a missing instance."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from batchseg.annotations import read_annotations
from batchseg.dataset import series_folder
from batchseg.levels import check_study
from batchseg.measures import measure_file
from batchseg.synth import VARIANTS, read_manifest, synth_dataset
from tests.conftest import batchseg
from tests.helpers import entries_both_ways

CSV_NAME = "train_label_coordinates.csv"


def _metadata(project: Path, study: str) -> dict:
    return json.loads((project / "results" / "metadata" / f"{study}_metadata.json").read_text())


def _checksums(results: Path) -> dict[str, str]:
    """sha256 of every output file but the metadata."""
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(results.rglob("*")) if p.is_file() and "metadata" not in p.parts}


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One dataset (8 studies, 5 good); project `with_csv` ran with the annotations, project `before` ran
    while the annotation file was away (it is back when the tests start)."""
    root = tmp_path_factory.mktemp("levels-run")
    data = root / "data"
    synth_dataset(data, 8, seed=3, matrix=64)
    out = {"data": data, "manifest": read_manifest(data)["studies"]}
    for name in ("with_csv", "before"):
        project = root / name
        batchseg("init", "--project", str(project), "--dataset", str(data), "--studies", str(data / "study_ids.txt"),
                 "--segmenter", "reference")
        if name == "before":
            (data / CSV_NAME).rename(root / CSV_NAME)
        batchseg("run", "--project", str(project), "--workers", "2", check=False)
        out[name] = project
    out["away"] = root / CSV_NAME
    out["good"] = sorted((s for s, info in out["manifest"].items() if info["broken"] is None), key=int)
    out["shifted"] = next(s for s in out["good"] if out["manifest"][s]["expected_levels"]["verdict"] == "shifted")
    return out


# With an L6 study, it is the shifted one (+1: counted up from the sacrum); without, the last good study (-1).
@pytest.mark.parametrize("variants,shifted", [(VARIANTS, [("L6", 1)]), (("normal", "T13"), [("normal", -1)])])
def test_every_variant_s_annotations_meet_its_ground_truth(tmp_path: Path, variants: tuple, shifted: list) -> None:
    """The synthetic points against the phantoms' own label maps (no segmenter): what each study must give."""
    data = tmp_path / "data"
    n = len(variants) if len(variants) > 2 else 3
    synth_dataset(data, n, seed=5, matrix=64, broken=False, variants=variants)
    manifest = read_manifest(data)["studies"]
    table = read_annotations(data / CSV_NAME)
    found = []
    for study, info in manifest.items():
        series = str(info["series"]["Sagittal T2/STIR"])
        sequence = measure_file(data / info["ground_truth"]).sequence
        check = check_study(table.for_study(study, series), series_folder(data, "train", study, series), sequence)
        assert (check.verdict, check.shift) == tuple(info["expected_levels"].values()), info["variant"]
        assert check.max_distance_mm < 10.0 and check.points == check.placed
        if check.verdict == "shifted":
            found.append((info["variant"], check.shift))
    assert found == shifted


def test_the_synthetic_annotations_are_rsna_canal_points(projects: dict) -> None:
    rows = list(csv.DictReader(open(projects["away"], newline="")))
    assert list(rows[0]) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    assert {r["condition"] for r in rows} == {"Spinal Canal Stenosis"}
    shifted = [s for s, info in projects["manifest"].items() if info.get("level_annotations") == "shifted +1"]
    assert shifted == [projects["shifted"]] and projects["manifest"][shifted[0]]["variant"] == "L6"


def test_every_phantom_agrees_and_the_shifted_one_is_shifted(projects: dict) -> None:
    project, manifest = projects["with_csv"], projects["manifest"]
    for study in projects["good"]:
        levels = _metadata(project, study)["levels"]
        expected = manifest[study]["expected_levels"]
        assert (levels["verdict"], levels["shift"]) == (expected["verdict"], expected["shift"]), manifest[study]
        assert levels["available"] and levels["points"] == levels["placed"] >= 3
        assert levels["max_distance_mm"] < 10.0
        assert all(d["distance_long_axis_mm"] < 10.0 and 15.0 < d["distance_3d_mm"] < 30.0 for d in levels["details"])
        assert all(len(d["world_ras_mm"]) == 3 for d in levels["details"])
        lstv = _metadata(project, study)["lstv"]
        marked = [c for c in lstv["candidates"] if c.get("source") == "level check"]
        if expected["verdict"] == "agree":
            assert levels["matched"] == levels["points"] and not marked
        else:
            # The L6 study, annotated by counting five lumbar levels up from the sacrum.
            assert levels["matched"] == 0 and len(marked) == 1 and marked[0]["pattern"] == "lumbarization"
            assert "SPINEPS L6/S1 where the annotators marked L5/S1" in marked[0]["evidence"]
            assert "SPINEPS L2/L3 where they marked L1/L2" in marked[0]["evidence"]
            assert any(c.startswith("level check: shifted") for c in lstv["caveats"])


def test_without_the_file_every_study_is_not_available_and_nothing_fails(projects: dict) -> None:
    project = projects["before"]
    status = json.loads(batchseg("status", "--project", str(project), "--json").stdout)
    assert status["states"]["done"] == len(projects["good"])
    for study in projects["good"]:
        levels = _metadata(project, study)["levels"]
        assert levels["verdict"] == "not_available" and not levels["available"]
        assert "no train_label_coordinates.csv" in levels["reason"]


def test_levels_fills_in_the_check_without_touching_the_model_outputs(projects: dict) -> None:
    project, data = projects["before"], projects["data"]
    results = project / "results"
    before = _checksums(results)
    meta_before = {s: _metadata(project, s) for s in projects["good"]}
    # Still without the file: not available everywhere, exit 0.
    away = json.loads(batchseg("levels", "--project", str(project), "--json").stdout)
    assert {s["levels"]["verdict"] for s in away["studies"]} == {"not_available"}
    assert away["summary"]["agreement_rate"] is None and away["summary"]["metadata_rewritten"] == 0
    shutil.copy(projects["away"], data / CSV_NAME)

    ran = batchseg("levels", "--project", str(project), "--json")
    got = json.loads(ran.stdout)
    assert [s["study_id"] for s in got["studies"]] == projects["good"]
    verdicts = {s["study_id"]: (s["levels"]["verdict"], s["levels"]["shift"]) for s in got["studies"]}
    assert verdicts == {s: tuple(projects["manifest"][s]["expected_levels"].values()) for s in projects["good"]}
    summary = got["summary"]
    assert summary["verdicts"]["agree"] == len(projects["good"]) - 1 and summary["verdicts"]["shifted"] == 1
    assert summary["agreement_rate"] == round((len(projects["good"]) - 1) / len(projects["good"]), 4)
    assert summary["metadata_rewritten"] == len(projects["good"]) and summary["errors"] == []
    # The ledger's digest of each rewritten metadata file was made again: the report believes it, and it
    # says what the files say.
    for study, (digested, from_files) in entries_both_ways(project).items():
        assert digested is not None and digested == from_files, study

    assert _checksums(results) == before                        # masks, centroids, NIfTI, QC: byte for byte
    for study, old in meta_before.items():
        new = _metadata(project, study)
        assert {k: v for k, v in new.items() if k not in ("levels", "lstv")} == \
            {k: v for k, v in old.items() if k not in ("levels", "lstv")}
        keep = ("candidates", "caveats")
        assert {k: v for k, v in new["lstv"].items() if k not in keep} == \
            {k: v for k, v in old["lstv"].items() if k not in keep}
        assert new["levels"] == {**_metadata(projects["with_csv"], study)["levels"],
                                 "source": str(data / CSV_NAME)}
        assert new["lstv"]["candidates"] == _metadata(projects["with_csv"], study)["lstv"]["candidates"]

    # Again: nothing changes, nothing is added twice.
    again = json.loads(batchseg("levels", "--project", str(project), "--json").stdout)
    assert again["summary"]["metadata_rewritten"] == 0
    assert [s["levels"] for s in again["studies"]] == [s["levels"] for s in got["studies"]]
    table = batchseg("levels", "--project", str(project)).stdout
    assert "agreement: 4 of 5 checked studies (80.0%)" in table and "shifted" in table


def test_the_report_puts_the_shifted_study_first(projects: dict, tmp_path: Path) -> None:
    project = projects["with_csv"]
    shifted = projects["shifted"]
    html, table = tmp_path / "r.html", tmp_path / "r.csv"
    report = json.loads(batchseg("report", "--project", str(project), "--json", "--html", str(html),
                                 "--csv", str(table)).stdout)
    check = report["level_check"]
    assert check["verdicts"]["agree"] == 4 and check["verdicts"]["shifted"] == 1 and check["agreement_rate"] == 0.8
    assert check["disagreeing"] == [shifted]
    page = html.read_text()
    section = page[page.index('<section id="levels">'):]
    section = section[:section.index("</section>")]
    assert "4 of 5 checked studies agree (80.0%)" in section
    rows = section.split("<tr><td>")[1:]
    assert rows[0].startswith(f"{shifted}</td>") and "shifted" in rows[0] and "+1" in rows[0]
    assert "L5/S1: SPINEPS L6/S1" in rows[0]
    by_study = {r["study_id"]: r for r in csv.DictReader(open(table, newline=""))}
    assert by_study[shifted]["levels_verdict"] == "shifted" and by_study[shifted]["levels_shift"] == "1"
    assert by_study[projects["good"][0]]["levels_verdict"] == "agree"
    assert float(by_study[projects["good"][0]]["levels_max_distance_mm"]) < 10.0
    broken = [s for s in by_study if s not in projects["good"]]
    assert all(by_study[s]["levels_verdict"] == "" for s in broken)
    # The shifted study is an LSTV candidate twice over: L6 in its labels, and the level check.
    entry = next(s for s in report["studies"] if s["study_id"] == shifted)
    assert entry["lstv"]["status"] == "candidate" and entry["lstv"]["candidate_patterns"] == ["lumbarization"] * 2


def test_status_study_shows_the_level_check(projects: dict) -> None:
    project, shifted = projects["with_csv"], projects["shifted"]
    text = batchseg("status", "--project", str(project), "--study", shifted).stdout
    assert "levels: shifted" in text and "shift: +1" in text and "other_level" in text
    data = json.loads(batchseg("status", "--project", str(project), "--study", shifted, "--json").stdout)
    assert data["levels"]["verdict"] == "shifted" and data["levels"]["details"][0]["nearest_disc"]


def test_a_missing_instance_and_bad_rows(projects: dict) -> None:
    project, data = projects["with_csv"], projects["data"]
    study = projects["good"][0]
    path = data / CSV_NAME
    original = path.read_text()
    lines = original.splitlines()
    n = next(i for i, line in enumerate(lines) if line.startswith(study + ","))
    cells = lines[n].split(",")
    cells[2] = "999"
    lines[n] = ",".join(cells)
    lines.append(f"{study},1,2,Spinal Canal Stenosis,L7/L8,1,2")
    try:
        path.write_text("\n".join(lines) + "\n")
        ran = batchseg("levels", "--project", str(project), "--study", study, "--json")
        [got] = json.loads(ran.stdout)["studies"]
        levels = got["levels"]
        assert levels["verdict"] == "agree" and levels["placed"] == levels["points"] - 1 == levels["matched"]
        assert levels["rows_skipped"] == 1
        missing = [d for d in levels["details"] if d["status"] == "not_placed"]
        assert len(missing) == 1 and "no image with InstanceNumber 999" in missing[0]["problem"]
        assert "1 point(s) not placed" in levels["reason"]
        text = batchseg("levels", "--project", str(project), "--study", study)
        assert "1 of" in text.stderr and "rows skipped" in text.stderr
        refused = batchseg("levels", "--project", str(project), "--study", "12345", check=False)
        assert refused.returncode == 2 and "no study '12345'" in refused.stderr
        # A mask that is no longer the one the metadata's checksum names is not measured again.
        mask = project / "results" / "segmentations" / f"{study}_seg-vert_msk.nii.gz"
        kept = mask.read_bytes()
        meta_before = (project / "results" / "metadata" / f"{study}_metadata.json").read_bytes()
        try:
            mask.write_bytes(kept + b"\0")
            changed = batchseg("levels", "--project", str(project), "--json", check=False)
            assert changed.returncode == 1
            result = json.loads(changed.stdout)
            [error] = result["summary"]["errors"]
            assert error["study_id"] == study and "differs from the checksum" in error["error"]
            assert (project / "results" / "metadata" / f"{study}_metadata.json").read_bytes() == meta_before
        finally:
            mask.write_bytes(kept)
    finally:
        path.write_text(original)
        batchseg("levels", "--project", str(project), "--study", study)
