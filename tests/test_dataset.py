"""The study inventory: study lists, the RSNA CSV and the series rule."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batchseg.dataset import DatasetError, build_inventory, is_valid_id, load_study_list

SHARED_IDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "valid_id.npy"


def write_dataset(root: Path, rows: list[tuple[str, str, str]], slices: dict[str, int] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["study_id,series_id,series_description"] + [",".join(r) for r in rows]
    (root / "train_series_descriptions.csv").write_text("\n".join(lines) + "\n")
    for study, series, _ in rows:
        folder = root / "train_images" / study / series
        folder.mkdir(parents=True, exist_ok=True)
        for i in range((slices or {}).get(series, 2)):
            (folder / f"{i + 1}.dcm").write_bytes(b"")
    return root


def test_study_lists_in_three_formats(tmp_path: Path) -> None:
    ids = np.array([4003253, 4646740, 2**40], dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    (tmp_path / "ids.csv").write_text("study_id,note\n4003253,a\n4646740,b\n1099511627776,c\n")
    (tmp_path / "ids.txt").write_text("# chosen by hand\n4003253\n\n4646740\n1099511627776\n")
    expected = ["4003253", "4646740", "1099511627776"]
    for name in ("ids.npy", "ids.csv", "ids.txt"):
        assert load_study_list(tmp_path / name) == expected


def test_excel_byte_order_mark_is_not_part_of_the_header_or_the_first_id(tmp_path: Path) -> None:
    (tmp_path / "ids.csv").write_bytes(b"\xef\xbb\xbfstudy_id,note\r\n4003253,a\r\n4646740,b\r\n")
    (tmp_path / "ids.txt").write_bytes(b"\xef\xbb\xbf4003253\r\n4646740\r\n")
    for name in ("ids.csv", "ids.txt"):
        assert load_study_list(tmp_path / name) == ["4003253", "4646740"]


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.uint32, np.float32])
def test_an_empty_npy_is_an_empty_list_whatever_its_numeric_dtype(tmp_path: Path, dtype: type) -> None:
    np.save(tmp_path / "none.npy", np.array([], dtype=dtype))
    assert load_study_list(tmp_path / "none.npy") == []


def test_an_empty_npy_of_strings_is_still_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "none.npy", np.array([], dtype="<U8"))
    with pytest.raises(DatasetError, match="integer"):
        load_study_list(tmp_path / "none.npy")


@pytest.mark.skipif(not SHARED_IDS.exists(), reason="shared data folder absent")
def test_the_seed_valid_id_list() -> None:
    ids = load_study_list(SHARED_IDS)
    assert len(ids) == 283 and all(is_valid_id(i) for i in ids)


@pytest.mark.parametrize("name,content", [
    ("floats.npy", np.array([1.5, 2.5])),
    ("matrix.npy", np.zeros((2, 2), dtype=np.int64)),
    ("objects.npy", np.array(["a", None], dtype=object)),
    ("garbage.npy", b"not numpy at all"),
    ("nocolumn.csv", "id\n1\n"),
    ("list.xlsx", "1\n"),
])
def test_malformed_study_lists_are_refused_with_their_class(tmp_path: Path, name: str, content: object) -> None:
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
        path = path if path.exists() else path.with_suffix(".npy")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(str(content))
    with pytest.raises(DatasetError) as caught:
        load_study_list(path)
    assert caught.value.error_class == "dataset.study_list"
    assert "\n" not in caught.value.message and name in caught.value.message


def test_missing_csv_column_names_the_column(tmp_path: Path) -> None:
    tmp_path.joinpath("train_series_descriptions.csv").write_text("study_id,series_id\n1,2\n")
    with pytest.raises(DatasetError) as caught:
        build_inventory(tmp_path)
    assert caught.value.error_class == "dataset.csv"
    assert "series_description" in caught.value.message


def test_missing_csv_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot open"):
        build_inventory(tmp_path)


def test_series_rule_never_takes_a_t1_and_explains_the_choice(tmp_path: Path) -> None:
    rows = [
        ("100", "3000000001", "Sagittal T1"), ("100", "3000000002", "Sagittal T2/STIR"), ("100", "3000000003", "Axial T2"),
        ("200", "3000000011", "Sagittal T1"), ("200", "3000000012", "Axial T2"),
        # two T2s: most slices wins, then the highest id
        ("300", "3000000021", "Sagittal T2/STIR"), ("300", "3000000022", "Sagittal T2/STIR"),
        ("400", "3000000031", "Sagittal T2/STIR"), ("400", "3000000032", "Sagittal T2/STIR"),
    ]
    dataset = write_dataset(tmp_path / "d", rows, slices={"3000000021": 17, "3000000022": 15})
    inventory = build_inventory(dataset, study_list=["100", "200", "300", "400", "500", "../etc/passwd", "100"])
    by_id = {r.study_id: r for r in inventory.rows}
    assert by_id["100"].series_id == "3000000002" and not by_id["100"].skip_class
    assert by_id["100"].input_path == str(dataset.resolve() / "train_images" / "100" / "3000000002")
    assert by_id["200"].skip_class == "input.no_series" and "Sagittal T1" in by_id["200"].skip_message
    assert by_id["300"].series_id == "3000000021" and "17 slices" in by_id["300"].selection_reason
    assert by_id["400"].series_id == "3000000032" and "highest id" in by_id["400"].selection_reason
    assert by_id["500"].skip_class == "input.no_series" and "not in train_series_descriptions.csv" in by_id["500"].skip_message
    unsafe = [r for r in inventory.rows if r.skip_class == "input.bad_id"]
    assert len(unsafe) == 1 and unsafe[0].input_path is None
    assert len(inventory.rows) == 6, "a repeated id is listed once"


def test_every_study_of_the_csv_when_no_list_and_limit(tmp_path: Path) -> None:
    rows = [(str(s), str(2**32 + s), "Sagittal T2/STIR") for s in (30, 4, 200)]
    inventory = build_inventory(write_dataset(tmp_path / "d", rows), limit=2)
    assert [r.study_id for r in inventory.rows] == ["4", "30"]


def test_csv_rows_with_bad_ids_are_warned_about_and_ignored(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d", [("100", "3000000002", "Sagittal T2/STIR")])
    with (dataset / "train_series_descriptions.csv").open("a") as handle:
        handle.write("1;rm -rf,2,Sagittal T2/STIR\n")
    inventory = build_inventory(dataset)
    assert [r.study_id for r in inventory.rows] == ["100"]
    assert len(inventory.warnings) == 1 and "line 3" in inventory.warnings[0]


def test_test_split_layout(tmp_path: Path) -> None:
    dataset = tmp_path / "d"
    dataset.mkdir()
    (dataset / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\n7,8,Sagittal T2/STIR\n")
    inventory = build_inventory(dataset, split="test")
    [row] = inventory.rows
    assert row.input_path.endswith("test_images/7/8")


def test_the_id_rule_admits_labels_and_never_a_path() -> None:
    from batchseg.dataset import is_rsna_id

    for good in ("4003253", "sub-01", "sub-01_ses-2", "1.2.826.0.1.3680043.8.498.12", "case-7", "A" * 128):
        assert is_valid_id(good), good
    for bad in ("", "..", "../x", "a/b", "a\\b", ".hidden", "-rf", "_x", "x..y", "a b", "a\n", "1\n", "x" * 129,
                "é1", "a:b"):
        assert not is_valid_id(bad), repr(bad)
    assert is_rsna_id("4003253") and not is_rsna_id("sub-01") and not is_rsna_id("1.2") and not is_rsna_id("12\n")


def test_rsna_ids_stay_plain_numbers(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d", [("100", "3000000002", "Sagittal T2/STIR")])
    rows = {r.study_id: r for r in build_inventory(dataset, study_list=["100", "sub-01"]).rows}
    assert rows["sub-01"].skip_class == "input.bad_id" and "plain decimal" in rows["sub-01"].skip_message


def test_a_series_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "d", [("100", "3000000002", "Sagittal T2/STIR")])
    csv_path = dataset / "train_series_descriptions.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes().replace(b"\n", b"\r\n"))
    [row] = build_inventory(dataset).rows
    assert row.study_id == "100" and row.series_id == "3000000002"


@pytest.mark.parametrize("content,words", [
    (b"study_id,series_id,series_description\n100,3000000002,Sagittal T2/STIR \xe9\n", "not UTF-8"),
    (b"study_id,series_id,series_description\n100,3000000002," + b"x" * 200_000 + b"\n", "field larger than"),
])
def test_an_unreadable_series_csv_is_one_line_naming_the_file(tmp_path: Path, content: bytes, words: str) -> None:
    from tests.conftest import batchseg

    dataset = write_dataset(tmp_path / "d", [("100", "3000000002", "Sagittal T2/STIR")])
    csv_path = dataset / "train_series_descriptions.csv"
    csv_path.write_bytes(content)
    result = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(dataset), check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert str(csv_path) in line and words in line and "dataset.csv" in line


def test_duplicate_rows_are_read_once_and_counted(tmp_path: Path) -> None:
    from tests.conftest import batchseg

    rows = [("100", "3000000002", "Sagittal T2/STIR"), ("100", "3000000002", "Sagittal T2/STIR"),
            ("100", "3000000001", "Sagittal T1"), ("200", "3000000012", "Sagittal T2/STIR"),
            ("200", "3000000012", "Sagittal T2/STIR"), ("200", "3000000012", "Sagittal T2/STIR")]
    dataset = write_dataset(tmp_path / "d", rows)
    inventory = build_inventory(dataset)
    assert inventory.duplicates == 3
    assert all(r.selection_reason == "the only Sagittal T2/STIR series" for r in inventory.rows)
    out = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(dataset)).stdout
    assert "2 studies listed, 2 with a Sagittal T2/STIR series, 0 skipped, 3 duplicate row(s) read once" in out


def test_the_compact_series_table_tells_series_and_descriptions_apart_exactly(tmp_path: Path) -> None:
    """Series ids that are prefixes and suffixes of one another, twelve descriptions (codes 1 and 11), repeats in any
    order: the table, its duplicates and its one-T2 shortcut agree with a plain list of (series, description)."""
    import random

    from batchseg.dataset import SAGITTAL_T2, Series, read_series_table, select_series

    names = [SAGITTAL_T2 if i == 11 else f"desc {i}" for i in range(12)]
    rng = random.Random(5)
    rows = [(str(study), rng.choice(["1", "11", "111", "21", "12"]), rng.choice(names))
            for study in range(1, 40) for _ in range(rng.randint(1, 8))]
    rng.shuffle(rows)
    path = write_dataset(tmp_path / "d", rows) / "train_series_descriptions.csv"
    table, warnings, duplicates = read_series_table(path, skip={"7"})
    expected: dict[str, list[Series]] = {}
    for study, series, description in rows:
        listed = expected.setdefault(study, [])
        if study != "7" and Series(series, description) not in listed:   # "7" is skipped: not read
            listed.append(Series(series, description))
    repeats = sum(1 for i, r in enumerate(rows) if r[0] != "7" and r in rows[:i])
    assert not warnings and duplicates == repeats
    assert dict(table) == expected and table["7"] == []
    for study, series in expected.items():
        if study == "7":
            continue
        t2 = [s.series_id for s in series if s.description == SAGITTAL_T2]
        only = table.only_sagittal_t2(table.encoded[study])
        assert only == (t2[0] if len(t2) == 1 else None), study
        if only is not None:
            assert select_series(study, series, tmp_path)[0] == Series(only, SAGITTAL_T2)
