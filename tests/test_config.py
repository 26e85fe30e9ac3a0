"""batchseg.toml: defaults, round trip, validation, finding the project."""
from __future__ import annotations

from pathlib import Path

import pytest

from batchseg.config import Config, ConfigError, find_project, load_config, write_config


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    config = Config(project_dir=tmp_path, dataset="/data/rsna", segmenter="spineps",
                    segmenter_options={"labeling": "", "device": "cuda"}, max_attempts=5)
    config.slurm.extra_args = ["--comment=it's \"quoted\" $(x)\\n"]
    config.slurm.partition = "gpu"
    config.container.binds = ["/data:/data"]
    write_config(config)
    again = load_config(tmp_path)
    assert again == config


def test_defaults_and_derived_paths(tmp_path: Path) -> None:
    write_config(Config(project_dir=tmp_path))
    config = load_config(tmp_path)
    assert config.out_dir == tmp_path / "results"
    assert config.db_url == f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    assert config.slurm.gres == "gpu:1" and config.max_attempts == 3


@pytest.mark.parametrize("text,message", [
    ("max_attempts = 0\n", "max_attempts"),
    ("colour = 'red'\n", "unknown key"),
    ("[slurm]\npartitions = 'gpu'\n", "unknown key"),
    ("lease_seconds = 10\nheartbeat_seconds = 30\n", "three heartbeats"),
    ("[container]\nruntime = 'docker'\n", "runtime"),
    ("this is not toml", "batchseg.toml"),
    ('max_attempts = "3"\n', "max_attempts"),
    ("workers = true\n", "workers"),
    ("lease_seconds = 900.0\n", "lease_seconds"),
    ("dataset = 7\n", "dataset"),
    ("segmenter_options = [1]\n", "segmenter_options"),
    ("[slurm]\ncpus_per_task = '4'\n", "slurm.cpus_per_task"),
    ("[slurm]\nextra_args = '--exclusive'\n", "slurm.extra_args"),
    ("[slurm]\nextra_args = ['--nice', 5]\n", "slurm.extra_args"),
    ("[container]\nbinds = '/data'\n", "container.binds"),
    ("segmenter = 'totalseg'\n", "segmenter must be one of reference, noop, spineps"),
])
def test_bad_values_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "batchseg.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path)


def test_type_errors_are_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "batchseg.toml").write_text('max_attempts = "3"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == "max_attempts must be a whole number, not '3'"


def test_write_config_refuses_a_bad_type_and_keeps_the_old_file(tmp_path: Path) -> None:
    write_config(Config(project_dir=tmp_path))
    before = (tmp_path / "batchseg.toml").read_text()
    with pytest.raises(ConfigError, match="workers"):
        write_config(Config(project_dir=tmp_path, workers="2"))  # type: ignore[arg-type]
    assert (tmp_path / "batchseg.toml").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batchseg.toml"], "no temporary file left behind"


@pytest.mark.parametrize("name", ["a%41b", "what?x=1", "hash#tag"])
def test_default_ledger_url_survives_url_characters_in_the_path(tmp_path: Path, name: str) -> None:
    from sqlalchemy import create_engine, make_url, text

    project = tmp_path / name
    project.mkdir()
    config = Config(project_dir=project)
    assert make_url(config.db_url).database == str(project / "ledger.sqlite")
    engine = create_engine(config.db_url)
    with engine.begin() as conn:
        conn.execute(text("create table t (x integer)"))
    engine.dispose()
    assert (project / "ledger.sqlite").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "no database beside the project"


def test_find_project_walks_up_and_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(Config(project_dir=tmp_path))
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    monkeypatch.delenv("BATCHSEG_PROJECT", raising=False)
    assert find_project(inner) == tmp_path
    monkeypatch.setenv("BATCHSEG_PROJECT", str(inner))
    assert find_project(tmp_path) == inner


def test_no_project_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHSEG_PROJECT", raising=False)
    with pytest.raises(ConfigError, match="batchseg init"):
        find_project(tmp_path)


def test_every_name_the_config_accepts_is_a_segmenter_the_registry_builds() -> None:
    from batchseg.segmenters import SEGMENTERS
    from batchseg.segmenters.names import SEGMENTER_NAMES

    assert tuple(SEGMENTERS) == SEGMENTER_NAMES


@pytest.mark.parametrize("content, message", [
    (b"segmenter = \"noop\"\n# caf\xe9 in Latin-1\n", "not UTF-8 text (byte 0xe9"),
    (b"slurm = 5\n", "[slurm] must be a table, not 5"),
    (b"container = \"apptainer\"\n", "[container] must be a table"),
])
def test_an_unreadable_project_file_is_one_line_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    from tests.conftest import batchseg

    (tmp_path / "batchseg.toml").write_bytes(content)
    result = batchseg("status", "--project", str(tmp_path), check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "batchseg.toml") in lines[0] and message in lines[0], result.stderr


@pytest.mark.parametrize("url, message", [
    ("mysql://lab:s3cret@db.example/ledger", "'mysql', whose Python driver is not installed"),
    ("postgresql+pg8000://lab:s3cret@db.example/ledger", "'postgresql+pg8000', whose Python driver is not installed"),
    ("postgresql+psycopg://lab:s3cret@db.example:port/ledger", "not a usable database URL"),
])
def test_a_db_url_that_cannot_work_is_one_line(synth_small: Path, tmp_path: Path, url: str, message: str) -> None:
    from tests.conftest import batchseg

    result = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(synth_small), "--db", url,
                      check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "s3cret" not in result.stderr, result.stderr
    assert not (tmp_path / "p" / "batchseg.toml").exists()


def test_a_password_makes_the_project_file_private(tmp_path: Path) -> None:
    import stat

    from batchseg.config import mask_passwords

    write_config(Config(project_dir=tmp_path, db="postgresql+psycopg://lab:s3cret@db.example/ledger"))
    assert stat.S_IMODE((tmp_path / "batchseg.toml").stat().st_mode) == 0o600
    assert mask_passwords("failed: postgresql+psycopg://lab:s3cret@db.example/x and sqlite:///a:b@c") == \
        "failed: postgresql+psycopg://lab:***@db.example/x and sqlite:///a:b@c"
