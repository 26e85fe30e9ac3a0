"""qc.py: a valid PNG, upright whatever the voxel layout, with the labels drawn where the mask is."""
from __future__ import annotations

import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from PIL import Image

from batchseg.measures import measure
from batchseg.qc import HEIGHT, TITLE_BAND, display_axes, write_qc_png

# A scene in a PIR layout (i: anterior -> posterior, j: superior -> inferior, k: right -> left as RSNA
# sagittals come out of the converter), 1 x 1.5 x 4 mm voxels.
SHAPE = (40, 60, 9)
AFFINE_PIR = np.array([[0.0, 0.0, -4.0, 16.0],
                       [-1.0, 0.0, 0.0, 20.0],
                       [0.0, -1.5, 0.0, 45.0],
                       [0.0, 0.0, 0.0, 1.0]])


def _scene():
    img = np.full(SHAPE, 100.0)
    img[:, :12, :] = 900.0            # superior band
    img[:6, 30:, :] = 600.0           # anterior strip in the inferior half
    mask = np.zeros(SHAPE, np.uint8)
    mask[14:26, 16:26, 3:7] = 20      # L1
    mask[14:26, 27:30, 3:7] = 120     # L1/L2
    mask[14:26, 31:42, 3:7] = 21      # L2
    return img, mask


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def test_display_axes_of_a_rsna_like_affine():
    lr, si, ap, flip_v, flip_h = display_axes(AFFINE_PIR)
    assert (lr, si, ap) == (2, 1, 0)
    assert not flip_v and not flip_h   # j already runs downwards, i already starts anterior


def test_writes_png_of_expected_size_with_title(tmp_path):
    img, mask = _scene()
    out = tmp_path / "qc" / "123_qc.png"
    write_qc_png(img, AFFINE_PIR, mask, measure(mask, AFFINE_PIR), out, title="study 123")
    with Image.open(out) as im:
        im.verify()
    px = _png(out)
    # 60 rows of 1.5 mm (90 mm) become 512 px; 40 columns of 1 mm become 40 mm at the same scale.
    assert px.shape == (HEIGHT + TITLE_BAND, round(40 * 512 / 90), 3)
    assert px[:TITLE_BAND].max() > 200          # white title text on the black band

    write_qc_png(img, AFFINE_PIR, mask, measure(mask, AFFINE_PIR), tmp_path / "plain.png")
    assert _png(tmp_path / "plain.png").shape[0] == HEIGHT


def test_picture_is_upright_and_anterior_left(tmp_path):
    img, mask = _scene()
    empty = np.zeros_like(mask)
    write_qc_png(img, AFFINE_PIR, empty, measure(empty, AFFINE_PIR), tmp_path / "a.png")
    px = _png(tmp_path / "a.png")[:, :, 0]
    h, w = px.shape
    assert px[: h // 8].mean() > 200                         # superior band at the top
    assert px[-h // 4:, : w // 10].mean() > px[-h // 4:, w // 2:].mean() + 100   # anterior strip on the left


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "I"), ("S", "R", "P")])
def test_same_scene_in_another_voxel_layout_gives_the_same_picture(tmp_path, codes):
    img, mask = _scene()
    t = ornt_transform(io_orientation(AFFINE_PIR), axcodes2ornt(codes))
    img2, mask2 = apply_orientation(img, t), apply_orientation(mask, t)
    aff2 = AFFINE_PIR @ inv_ornt_aff(t, SHAPE)
    write_qc_png(img, AFFINE_PIR, mask, measure(mask, AFFINE_PIR), tmp_path / "a.png", title="x")
    write_qc_png(img2, aff2, mask2, measure(mask2, aff2), tmp_path / "b.png", title="x")
    assert np.array_equal(_png(tmp_path / "a.png"), _png(tmp_path / "b.png"))


def test_overlay_marks_the_mask_and_names_the_structures(tmp_path):
    img, mask = _scene()
    empty = np.zeros_like(mask)
    write_qc_png(img, AFFINE_PIR, empty, measure(empty, AFFINE_PIR), tmp_path / "bare.png")
    write_qc_png(img, AFFINE_PIR, mask, measure(mask, AFFINE_PIR), tmp_path / "lab.png")
    bare, lab = _png(tmp_path / "bare.png"), _png(tmp_path / "lab.png")
    h, w, _ = bare.shape
    # Where L1 is (rows 16..25 of 60, columns 14..25 of 40), every pixel is tinted.
    r0, r1 = int(17 * h / 60), int(25 * h / 60)
    c0, c1 = int(15 * w / 40), int(25 * w / 40)
    assert (np.abs(lab[r0:r1, c0:c1] - bare[r0:r1, c0:c1]).sum(axis=2) > 0).all()
    # Far from the mask and the names, nothing changes.
    assert np.array_equal(lab[-40:, -10:], bare[-40:, -10:])
    # Names are drawn beside the structures: pixels change outside the mask too, right of L1.
    right = lab[r0:r1, c1 + 4:] != bare[r0:r1, c1 + 4:]
    assert right.any()


def test_real_phantom_output(tmp_path):
    from batchseg.segmenters.reference import segment_volume
    from batchseg.synth import synth_dataset
    from batchseg.dicom import read_series

    m = synth_dataset(tmp_path / "ds", n_studies=1, seed=2, matrix=128)
    s = m.studies[0]
    data, aff, _ = read_series(m.root / "train_images" / str(s.study_id) / str(s.series["Sagittal T2/STIR"]))
    vert, _, _ = segment_volume(data.astype(np.float32), aff)
    out = tmp_path / f"{s.study_id}_qc.png"
    write_qc_png(data, aff, vert, measure(vert, aff), out, title=f"study {s.study_id}")
    px = _png(out)
    assert px.shape[0] == HEIGHT + TITLE_BAND and 400 < px.shape[1] < 620   # square ~290 mm field


# ---------------------------------------------------------------- names readable at thumbnail size


def _names_scene(labels: list[int], **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tall stack (tests/label_maps.py) with an image: one bright body per label."""
    from tests.label_maps import AFFINE, spine_map

    mask = spine_map(labels, **kwargs)
    img = np.where(mask > 0, 800.0, 100.0)
    return img, mask, AFFINE


def _inside(box, width: int, height: int) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height


def test_only_vertebrae_and_sacrum_are_named_and_nothing_is_clipped(tmp_path):
    from tests.label_maps import stack

    labels = stack("126", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
    img, mask, aff = _names_scene(labels)
    # Endplates on both sides of each lumbar disc, as SPINEPS writes 200+X.
    for v in (120, 121, 122, 123, 124):
        k = np.flatnonzero((mask == v).any(axis=(0, 1)))
        mask[4:16, 2:10, k[0] - 1] = 100 + v
        mask[4:16, 2:10, k[-1] + 1] = 100 + v
    m = measure(mask, aff)
    out = tmp_path / "qc.png"
    texts = write_qc_png(img, aff, mask, m, out, title="study 123456789012 with a long title that must be cut")
    assert [t.text for t in texts] == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    px = _png(out)
    height, width = px.shape[:2]
    for t in texts:
        assert _inside(t.box, width, height), t
    ordered = sorted(texts, key=lambda t: t.box[1])
    for a, b in zip(ordered, ordered[1:]):
        assert a.box[3] <= b.box[1] + 1, (a, b)     # no two names overlap


def test_caveated_labels_are_marked(tmp_path):
    from tests.label_maps import stack

    img, mask, aff = _names_scene(stack("T11", "T12", "T12", "L1", "L2", "L3", "L4", "L5", "S1"))
    m = measure(mask, aff)
    assert 19 in m.lstv.caveat_labels
    texts = write_qc_png(img, aff, mask, m, tmp_path / "qc.png", title="x")
    marked = [t.text for t in texts if t.caveat]
    assert sorted(marked) == ["T12 !", "T12 !", "T12/L1 !", "T12/T12 !"]
    assert not any(t.caveat for t in texts if t.label not in m.lstv.caveat_labels)
    px = _png(tmp_path / "qc.png")
    band = px[:TITLE_BAND]
    red = (band[:, :, 0] > 200) & (band[:, :, 1] < 120) & (band[:, :, 2] < 120)
    assert red[:, px.shape[1] // 2:].any()              # the "! caveat" legend, right of the title


def test_a_whole_spine_gets_smaller_names_that_still_do_not_overlap(tmp_path):
    from batchseg.labels import VERTEBRA_NAMES

    names = [VERTEBRA_NAMES[v] for v in range(1, 25)] + ["S1"]
    from tests.label_maps import stack

    img, mask, aff = _names_scene(stack(*names))
    texts = write_qc_png(img, aff, mask, measure(mask, aff), tmp_path / "qc.png")
    assert len(texts) == 25
    px = _png(tmp_path / "qc.png")
    ordered = sorted(texts, key=lambda t: t.box[1])
    for a, b in zip(ordered, ordered[1:]):
        assert a.box[3] <= b.box[1] + 1
    assert all(_inside(t.box, px.shape[1], px.shape[0]) for t in texts)
