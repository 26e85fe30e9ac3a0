"""The `dicom` layout: a PACS export read once per file, grouped by UIDs, the sagittal T2 chosen by rule."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from batchseg.dicom_tree import (HeaderCache, SeriesFacts, cache_path, choose_series, group_series, scan_tree,
                                 weighting)
from batchseg.inventory import build
from batchseg.synth_layouts import synth_layout
from tests.dicom_factory import AXIAL, SAGITTAL, make_volume, write_series


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two studies, four series each (sagittal T1, sagittal T2, axial T2, a localizer), files mixed over folders."""
    made = synth_layout(tmp_path_factory.mktemp("tree") / "export", "dicom", n_studies=2, seed=5, matrix=64,
                        broken=False)
    return made.root


def rows_of(inventory) -> dict[str, tuple]:
    return {r.study_id: (r.series_id, r.selection_reason, r.skip_class) for r in inventory.rows}


def test_the_sagittal_t2_of_each_study_is_chosen_with_its_reason(tree: Path, tmp_path: Path) -> None:
    files = [p for p in tree.rglob("*") if p.is_file()]
    assert any(p.suffix == "" and p.name.startswith("IM") for p in files), "extension-less files"
    assert max(len(p.relative_to(tree).parts) for p in files) >= 6, "nested folders"
    inventory = build("dicom", tree, tmp_path / "p")
    assert len(inventory.pending) == 2 and not inventory.skipped
    reasons = []
    for row in inventory.rows:
        series = {int(pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber) for p in listed_files(row)}
        assert row.series_id == f"{row.study_id}.2" and series == {2}, "the T2 series and only its files"
        assert "sagittal T2" in row.selection_reason and "the only sagittal T2 series of 4" in row.selection_reason
        reasons.append(row.selection_reason)
    # The first study's series are named; the second's descriptions are empty, so the timings decide.
    assert any("keyword 't2' in SeriesDescription 't2_tse_sag'" in r for r in reasons)
    assert any("EchoTime 105 ms, RepetitionTime 3800 ms" in r for r in reasons)
    assert "1 DICOMDIR ignored" in inventory.notes[0]


def listed_files(row) -> list[Path]:
    listing = json.loads(Path(row.input_path).read_text())
    return [Path(listing["root"]) / f for f in listing["files"]]


def test_moving_files_between_folders_changes_nothing(tree: Path, tmp_path: Path) -> None:
    before = rows_of(build("dicom", tree, tmp_path / "p"))
    moved = tmp_path / "moved"
    shutil.copytree(tree, moved)
    images = sorted(p for p in moved.rglob("IM*") if p.is_file())
    rng = random.Random(7)
    folders = [moved / "x", moved / "x" / "y" / "z", moved / "DICOM" / "other", moved]
    for n, path in enumerate(images):
        target = rng.choice(folders)
        target.mkdir(parents=True, exist_ok=True)
        path.rename(target / f"{rng.randrange(10**6):06d}_{n}")       # new names too
    for project in (tmp_path / "p2", tmp_path / "p"):                  # a fresh project, and one with a cache
        after = build("dicom", moved, project)
        assert rows_of(after) == before
        for row in after.pending:
            assert all(p.is_file() and p.is_relative_to(moved) for p in listed_files(row))


def test_a_second_scan_reads_no_header_and_a_changed_file_alone_is_read_again(tree: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tree, data)
    cache_file = cache_path(tmp_path / "p")
    first = HeaderCache(cache_file)
    scan = scan_tree(data, first)
    first.save()
    assert first.read == len(scan.files) > 60 and first.cached == 0
    second = HeaderCache(cache_file)
    scan_tree(data, second)
    assert second.read == 0 and second.cached == len(scan.files)
    changed = sorted(data.rglob("IM*"))[3]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 1_000_000))
    gone = sorted(data.rglob("IM*"))[5]
    gone.unlink()
    third = HeaderCache(cache_file)
    scan_tree(data, third)
    third.save()
    assert third.read == 1 and third.cached == len(scan.files) - 2
    kept = json.loads(cache_file.read_text())["files"]
    assert str(gone) not in kept and str(changed) in kept and len(kept) == len(scan.files) - 1


def test_init_twice_over_the_tree_reads_no_header_the_second_time(tree: Path, tmp_path: Path) -> None:
    from tests.conftest import batchseg

    project = tmp_path / "p"
    first = batchseg("init", "--project", str(project), "--dataset", str(tree), "--segmenter", "noop").stdout
    second = batchseg("init", "--project", str(project), "--dataset", str(tree)).stdout
    count = len([p for p in tree.rglob("*") if p.is_file() and p.name != "DICOMDIR"])
    assert f"{count} files: {count} headers read, 0 from the cache" in first
    assert f"{count} files: 0 headers read, {count} from the cache" in second
    assert "layout dicom (as in batchseg.toml)" in second and "0 added, 2 already there" in second


def facts(description: str = "", protocol: str = "", *, series: str = "1.2.3.4", number: int = 1,
          images: int = 15, **tags) -> SeriesFacts:
    """A series as the header facts of its first file and its image count make it."""
    first = {"description": description, "protocol": protocol, "modality": "MR", "image_type": ["ORIGINAL"],
             "number": number, **tags}
    s = SeriesFacts("1.2.3", series, ["a"], first)
    s.planes["sagittal"] = images
    return s


@pytest.mark.parametrize("description,protocol,tags,weight,tier", [
    ("T2_TSE_SAG", "", {}, "T2", 0),
    ("sag T12-L1 t2w", "", {}, "T2", 0),                       # a level name is no T1
    ("t1_tse_sag", "", {"te": 100.0, "tr": 4000.0}, "T1", 3),   # never a T1, whatever the timings
    ("SAG T2", "t1_tse_sag", {}, "T1", 3),
    ("FLAIR T2", "", {}, "FLAIR", 3),
    ("T2*_gre_sag", "", {}, "T2*", 3),
    ("PD_TSE_SAG", "", {}, "PD", 3),
    ("STIR_SAG", "", {}, "STIR", 1),
    ("t2_tirm_sag", "", {}, "STIR", 1),
    ("", "sag tse", {"te": 12.0, "tr": 600.0}, "T1", 3),       # a TSE of unnamed weighting: the timings say T1
    ("sag tse", "", {}, "T2", 2),                              # ... and without timings, the keyword
    ("", "", {"te": 100.0, "tr": 4000.0}, "T2", 2),
    ("", "", {"te": 40.0, "tr": 3000.0, "ti": 150.0}, "STIR", 2),
    ("", "", {"te": 100.0, "tr": 9000.0, "ti": 2500.0}, "FLAIR", 3),
    ("", "", {"te": 10.0, "tr": 500.0}, "T1", 3),
    ("", "", {"te": 20.0, "tr": 3000.0}, "PD", 3),
    ("", "", {}, "unknown", 3),
    ("sag", "", {"contrast": "T2"}, "T2", 0),                  # an enhanced file's AcquisitionContrast
])
def test_weighting_rules(description: str, protocol: str, tags: dict, weight: str, tier: int) -> None:
    found, how, found_tier = weighting(facts(description, protocol, **tags))
    assert (found, found_tier) == (weight, tier), how


def test_the_choice_among_several_sagittal_t2_series() -> None:
    stir = facts("STIR_SAG", number=5, series="1.2.3.5", images=20)
    t2 = facts("T2_TSE_SAG", number=3, series="1.2.3.3", images=15)
    timed = facts("", number=9, series="1.2.3.9", te=100.0, tr=4000.0, images=30)
    chosen, reason = choose_series("1.2.3", [stir, t2, timed])
    assert chosen is t2 and reason.startswith("3 sagittal T2 series") and "chose #3 'T2_TSE_SAG'" in reason
    bigger = facts("T2_TSE_SAG", number=4, series="1.2.3.6", images=17)
    assert choose_series("1.2.3", [t2, bigger])[0] is bigger
    derived = facts("T2_TSE_SAG", number=8, series="1.2.3.8", images=40, image_type=["DERIVED", "SECONDARY"])
    assert choose_series("1.2.3", [t2, derived])[0] is t2


def test_what_is_never_chosen() -> None:
    localizer = facts("t2 localizer", images=3)
    axial = facts("T2_TSE_TRA")
    axial.planes.clear()
    axial.planes["axial"] = 30
    ct = facts("T2 SAG", modality="CT")
    single = facts("T2_TSE_SAG", images=1)
    chosen, reason = choose_series("1.2.3", [localizer, axial, ct, single])
    assert chosen is None
    assert "localizer" in reason and "axial T2" in reason and "CT" in reason and "among 4" in reason


def enhanced_file(path: Path, *, shared_orientation: bool, frames: int = 12) -> None:
    """An Enhanced MR Image Storage file: orientation and timings only in the functional groups."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedMRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77", generate_uid()
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "MR", 301, ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    orientation = Dataset()
    orientation.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    timing = Dataset()
    timing.RepetitionTime = 3200
    shared = Dataset()
    shared.MRTimingAndRelatedParametersSequence = [timing]
    if shared_orientation:
        shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(frames):
        item, position, echo = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [4.0 * k, 0, 0]
        echo.EffectiveEchoTime = 96
        item.PlanePositionSequence, item.MREchoSequence = [position], [echo]
        if not shared_orientation:
            item.PlaneOrientationSequence = [orientation]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = bytes(frames * 16 * 16 * 2)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("shared_orientation", [True, False])
def test_an_enhanced_multiframe_series_is_classified_from_its_functional_groups(
        tmp_path: Path, shared_orientation: bool) -> None:
    data = tmp_path / "export"
    data.mkdir()
    enhanced_file(data / "EN000001", shared_orientation=shared_orientation)
    inventory = build("dicom", data, tmp_path / "p")
    [row] = inventory.rows
    assert not row.skip_class
    assert "sagittal T2: EchoTime 96 ms, RepetitionTime 3200 ms; 12 images" in row.selection_reason


def test_dicomdir_junk_and_unreadable_files(tmp_path: Path) -> None:
    data = tmp_path / "export"
    t2 = write_series(data / "a" / "b", make_volume(6, 16, 16), orientation=SAGITTAL, file_names="uid")
    ax = write_series(data / "c", make_volume(5, 16, 16), orientation=AXIAL)
    for path in ax.paths:                                            # the axial series joins the T2's study
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = pydicom.dcmread(t2.paths[0]).StudyInstanceUID
        ds.SeriesNumber = 2
        ds.save_as(path)
    other = write_series(tmp_path / "other", make_volume(6, 16, 16))
    shutil.copyfile(other.paths[0], data / "DICOMDIR")                # never read: its name says what it is
    (data / "c" / "notes.txt").write_text("hello")
    (data / "c" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    inventory = build("dicom", data, tmp_path / "p")
    [row] = inventory.rows                                           # the DICOMDIR's study is not there
    assert row.series_id == str(pydicom.dcmread(t2.paths[0]).SeriesInstanceUID)
    assert "of 2" in row.selection_reason
    assert "1 DICOMDIR ignored" in inventory.notes[0] and "1 other files ignored" in inventory.notes[0]
    assert len(inventory.warnings) == 1 and "c/broken.dcm" in inventory.warnings[0]


def test_a_tree_without_images_stops_init(tmp_path: Path) -> None:
    from batchseg.dataset import DatasetError

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError) as caught:
        build("dicom", tmp_path / "empty", tmp_path / "p")
    assert caught.value.error_class == "dataset.layout" and "among 1 files" in caught.value.message


def test_pixels_are_never_read(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr("batchseg.dicom_tree.pydicom.dcmread", spy)
    build("dicom", tree, tmp_path / "p")
    assert calls and all(c.get("stop_before_pixels") and c.get("specific_tags") for c in calls)
    assert np.all([len(c["specific_tags"]) < 30 for c in calls])


def test_a_worker_converts_the_series_its_ledger_row_names(tmp_path: Path) -> None:
    """A later init that would choose another series leaves the ledger's choice, and the worker follows the row."""
    from tests.conftest import batchseg, status_json

    data = tmp_path / "export"
    first = write_series(data / "one", make_volume(5, 16, 16), file_names="uid")
    project = tmp_path / "p"
    batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop")
    study = str(pydicom.dcmread(first.paths[0]).StudyInstanceUID)
    second = write_series(data / "two", make_volume(7, 16, 16), file_names="uid")   # more slices: a better choice
    for path in second.paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.SeriesNumber = 2
        ds.save_as(path)
    for n, path in enumerate(first.paths):                                            # and the first one moves
        path.rename(data / f"moved_{n}")
    again = batchseg("init", "--project", str(project), "--dataset", str(data)).stdout
    assert "chose #2" in again and "1 already there" in again
    batchseg("run", "--project", str(project))
    assert status_json(project)["states"]["done"] == 1
    metadata = json.loads((project / "results" / "metadata" / f"{study}_metadata.json").read_text())
    assert metadata["series_id"] == str(pydicom.dcmread(data / "moved_0").SeriesInstanceUID)
    assert len(metadata["input"]["conversion"]["slices_used"]) == 5


def test_real_enhanced_files_are_read_from_their_functional_groups() -> None:
    """dcm_qa_enh and dicom2nifti's enhanced files (tests/data/enhanced): plane, frames and timings come out."""
    root = Path(__file__).parent / "data" / "enhanced"
    cache = HeaderCache(None)
    images = scan_tree(root, cache).images()
    philips = images["dicom2nifti/philips_enhanced_anatomical/IM-0001-0170-0001.dcm"]
    assert (philips["plane"], philips["frames"], philips["te"]) == ("sagittal", 8, 3.133)
    assert images["dcm_qa_enh/Siemens_XA10/6_1.dcm"]["plane"] == "axial"
    assert images["dcm_qa_enh/Siemens_XA10/6_1.dcm"]["tr"] == 500.0          # from the shared groups' timing
    series = [s for group in group_series(images).values() for s in group]
    sagittal = [s for s in series if s.plane == "sagittal"]
    assert len(sagittal) == 1 and weighting(sagittal[0])[0] == "T1"          # a short-TE, short-TR gradient echo
    assert all(choose_series(s.study, [s])[0] is None for s in series)
