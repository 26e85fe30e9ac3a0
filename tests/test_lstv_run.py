"""Every phantom variant end to end through `batchseg run` (reference segmenter): the findings it must give."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchseg.synth import VARIANTS, read_manifest, synth_dataset
from tests.conftest import batchseg, status_json


@pytest.fixture(scope="module")
def every_variant_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("lstv-run")
    data = root / "data"
    synth_dataset(data, len(VARIANTS), seed=21, matrix=64, broken=False)
    project = root / "p"
    batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "reference")
    batchseg("run", "--project", str(project), "--workers", "2")
    return project, read_manifest(data)["studies"]


def _metadata(project: Path, study: str) -> dict:
    return json.loads((project / "results" / "metadata" / f"{study}_metadata.json").read_text())


def test_every_variant_gives_its_expected_findings(every_variant_run: tuple[Path, dict]) -> None:
    project, manifest = every_variant_run
    assert status_json(project)["states"]["done"] == len(VARIANTS)
    assert sorted(info["variant"] for info in manifest.values()) == sorted(VARIANTS)
    for study, info in manifest.items():
        lstv = _metadata(project, study)["lstv"]
        got = {k: lstv[k] for k in ("pattern", "count_assessable", "lumbar_count")}
        assert got == info["expected_lstv"], info["variant"]
        assert (lstv["count_reason"] is None) == info["expected_lstv"]["count_assessable"]
        assert bool(lstv["caveats"]) == (info["variant"] in ("top_L1", "top_L2", "no_sacrum", "sacral_disc",
                                                             "duplicate_T12", "L6")), info["variant"]
        # The level check: every phantom agrees with its annotations, but the L6 one, whose annotators counted
        # five lumbar levels up from the sacrum (synth.py).
        levels = _metadata(project, study)["levels"]
        assert (levels["verdict"], levels["shift"]) == tuple(info["expected_levels"].values()), info["variant"]
        assert levels["verdict"] == ("shifted" if info["variant"] == "L6" else "agree")
        assert levels["max_distance_mm"] < 10.0
        names = json.loads((project / "results" / "centroids" / f"{study}_vertebra_labels.json").read_text())
        assert names == info["expected_labels"], info["variant"]
        # The pipeline read the semantic mask: every vertebra has its body centroid, named as such.
        centroids = json.loads((project / "results" / "centroids" / f"{study}_centroids.json").read_text())
        assert "body_centroid_world" in centroids["definitions"]
        vertebrae = [v for k, v in centroids.items() if k.startswith("vertebra_")]
        assert vertebrae and all(v["body_centroid_voxel"] is not None for v in vertebrae)
        # The reference segmenter makes no picture of its own.
        assert not (project / "results" / "qc" / f"{study}_spineps.png").exists()
        assert "qc_segmenter" not in _metadata(project, study)["outputs"]


def test_split_and_duplicated_labels_reach_the_metadata(every_variant_run: tuple[Path, dict]) -> None:
    project, manifest = every_variant_run
    by_variant = {info["variant"]: study for study, info in manifest.items()}
    sacral = _metadata(project, by_variant["sacral_disc"])["lstv"]
    assert [s["label"] for s in sacral["split_labels"]] == [124] and sacral["caveat_labels"] == [124]
    assert [c["pattern"] for c in sacral["candidates"]] == ["lumbarization"]
    dup = _metadata(project, by_variant["duplicate_T12"])["lstv"]
    assert [s["label"] for s in dup["split_labels"]] == [19, 119]
    assert dup["sequence"].count("T12") == 2
    top = _metadata(project, by_variant["top_L2"])["lstv"]
    assert top["count_reason"] == "thoracolumbar junction (T12/L1) not in view: top vertebra L2"
    assert top["candidates"] == [] and any("label 126" in n for n in top["notes"])
