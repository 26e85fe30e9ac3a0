"""Placing an annotated pixel in world space through its own DICOM file (dicom.instance_planes, levels.place_points)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from batchseg.annotations import LevelPoint
from batchseg.dicom import instance_planes, read_series
from batchseg.levels import place_points
from tests.dicom_factory import make_volume, write_enhanced, write_series


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    cx, sx = np.cos(np.radians(ax)), np.sin(np.radians(ax))
    cy, sy = np.cos(np.radians(ay)), np.sin(np.radians(ay))
    cz, sz = np.cos(np.radians(az)), np.sin(np.radians(az))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture()
def oblique(tmp_path: Path) -> tuple[Path, list[Path]]:
    """An oblique sagittal series: IOP turned about all three axes, anisotropic pixels, instance numbers
    running against the position along the normal, and file names that are NOT the instance numbers
    (each file carries the name of another instance)."""
    rot = _rotation(7.0, -11.0, 17.0)
    row, col = rot @ np.array([0.0, 1.0, 0.0]), rot @ np.array([0.0, 0.0, -1.0])
    folder = tmp_path / "series"
    series = write_series(folder, make_volume(n_slices=9, rows=40, cols=56), orientation=(tuple(row), tuple(col)),
                          pixel_spacing=(0.83, 0.47), step=3.9, origin=(-31.5, -112.25, 61.0),
                          instance_order="descending", file_names="uid")
    # Rename every file to the name of another instance: "3.dcm" does not hold InstanceNumber 3.
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in series.paths]
    staged = [p.rename(p.with_name(f"tmp{n}.dcm")) for n, p in enumerate(series.paths)]
    renamed = []
    for n, p in enumerate(staged):
        renamed.append(p.rename(p.with_name(f"{numbers[(n + 3) % len(numbers)]}.dcm")))
    return folder, renamed


def _by_tags(folder: Path, instance: int, x: float, y: float) -> np.ndarray:
    """The world point computed here from the tags alone, independently of batchseg."""
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        if int(ds.InstanceNumber) != instance:
            continue
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        lps = ipp + x * col_spacing * iop[:3] + y * row_spacing * iop[3:]
        return np.array([-lps[0], -lps[1], lps[2]])
    raise AssertionError(f"no instance {instance}")


def test_a_hand_made_point_on_an_oblique_series_lands_where_the_tags_say(oblique) -> None:
    folder, paths = oblique
    point = LevelPoint("1", "2", 4, "Spinal Canal Stenosis", "L4/L5", 31.25, 17.5, 2)
    assert not (folder / "4.dcm").exists() or int(pydicom.dcmread(folder / "4.dcm").InstanceNumber) != 4
    [(p, world, why)] = place_points([point], folder)
    assert why == "" and p is point
    expected = _by_tags(folder, 4, 31.25, 17.5)
    assert np.allclose(world, expected, atol=1e-6)
    # The converter's affine agrees: the world point is voxel (x, y, k) of the volume, k the slice of instance 4.
    data, affine, report = read_series(folder, require_plane=None)
    k = next(n for n, name in enumerate(report.slices_used)
             if int(pydicom.dcmread(folder / name, stop_before_pixels=True).InstanceNumber) == 4)
    voxel = np.linalg.inv(affine) @ np.append(world, 1.0)
    assert np.allclose(voxel[:3], [31.25, 17.5, k], atol=1e-4)


def test_instances_are_found_by_tag_and_problems_are_reported_not_guessed(oblique, tmp_path: Path) -> None:
    folder, paths = oblique
    planes = instance_planes(folder)
    assert sorted(planes.planes) == list(range(1, 10)) and planes.problems == {}
    for number, plane in planes.planes.items():
        assert int(pydicom.dcmread(folder / plane.file, stop_before_pixels=True).InstanceNumber) == number
        assert plane.pixel_spacing == (0.83, 0.47) and (plane.rows, plane.cols) == (40, 56)
    # An instance number held by two files is not guessed; a missing one is said to be missing.
    shutil.copy(folder / planes.planes[5].file, folder / "copy-of-five.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    again = instance_planes(folder)
    assert 5 not in again.planes and "held by 2 files" in again.why_not(5)
    assert "no image with InstanceNumber 42" in again.why_not(42)
    points = [LevelPoint("1", "2", n, "Spinal Canal Stenosis", "L1/L2", 10.0, 10.0, 2) for n in (5, 42, 6)]
    points.append(LevelPoint("1", "2", 6, "Spinal Canal Stenosis", "L2/L3", 56.0, 10.0, 3))   # beyond the last column
    placed = place_points(points, folder)
    assert [world is None for _, world, _ in placed] == [True, True, False, True]
    assert "outside the 56 x 40 pixels" in placed[3][2]
    # Another series' files in the folder are left out when the converted series is named.
    other = write_series(tmp_path / "other", make_volume(n_slices=3, rows=8, cols=8), instance_order="ascending")
    shutil.copy(other.paths[0], folder / "other-series.dcm")
    uid = str(pydicom.dcmread(folder / planes.planes[6].file, stop_before_pixels=True).SeriesInstanceUID)
    assert 1 in instance_planes(folder, series_uid=uid).planes and "held by 2" in instance_planes(folder).why_not(1)
    # A missing folder: every point reported.
    gone = place_points(points[:1], tmp_path / "nowhere")
    assert gone[0][1] is None and "does not exist" in gone[0][2]


def test_a_multi_frame_file_is_not_placed(tmp_path: Path) -> None:
    series = write_series(tmp_path / "classic", make_volume(n_slices=4, rows=16, cols=16))
    folder = tmp_path / "enhanced"
    folder.mkdir()
    write_enhanced(series.paths, folder / "1.dcm")
    number = int(pydicom.dcmread(folder / "1.dcm", stop_before_pixels=True).get("InstanceNumber", 1))
    why = instance_planes(folder).why_not(number)
    assert "multi-frame" in why and "which frame" in why
