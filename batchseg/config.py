"""The project file `batchseg.toml`: defaults, validation, one dataclass.

A project is a folder holding `batchseg.toml`, the SQLite ledger (unless the
config names another database URL), `logs/` and, by default, `results/`.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from .files import write_atomic
from .segmenters.names import SEGMENTER_NAMES

CONFIG_NAME = "batchseg.toml"
LAYOUTS = ("rsna", "bids", "manifest", "dicom")
PROJECT_ENV = "BATCHSEG_PROJECT"
DB_ENV = "BATCHSEG_DB"            # --db from the environment: how an override reaches workers


class ConfigError(ValueError):
    """The project file is missing or holds a value batchseg cannot use."""


@dataclass
class SlurmConfig:
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "04:00:00"
    mem: str = "32G"
    cpus_per_task: int = 4
    gres: str = "gpu:1"
    constraint: str = ""
    extra_args: list[str] = field(default_factory=list)
    max_parallel: int = 0          # 0: no %M throttle
    signal_grace: int = 120        # seconds before the time limit that USR1 arrives
    workers_per_task: int = 1      # `batchseg work` processes per task, over its GPUs, sharing its CPUs


@dataclass
class ContainerConfig:
    runtime: str = "none"          # none | apptainer | singularity
    image: str = ""
    binds: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)  # e.g. ["--nv"]; defaults to --nv for GPU runs


@dataclass
class Config:
    project_dir: Path
    dataset: str = ""
    layout: str = "rsna"           # rsna | bids | manifest | dicom (README "Dataset layouts")
    nifti_input: str = "copy"      # copy | link: how a NIfTI input reaches results/nifti/
    studies_file: str = ""
    split: str = "train"
    out: str = "results"
    db: str = ""                   # SQLAlchemy URL; empty means <project>/ledger.sqlite
    segmenter: str = "reference"
    segmenter_options: dict[str, Any] = field(default_factory=dict)
    models_dir: str = ""           # SPINEPS weights folder (SPINEPS_SEGMENTOR_MODELS)
    max_attempts: int = 3
    lease_seconds: int = 900
    heartbeat_seconds: int = 30
    # How long a worker keeps trying an unreachable ledger (a database restart or failover, a long
    # lock on a shared filesystem) before it gives up; waits grow 1, 2, 4 ... 30 s.
    db_retry_seconds: int = 600
    workers: int = 1
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    container: ContainerConfig = field(default_factory=ContainerConfig)

    def path(self, value: str) -> Path:
        """A path from the config, relative to the project folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.project_dir / p

    @property
    def out_dir(self) -> Path:
        return self.path(self.out)

    @property
    def logs_dir(self) -> Path:
        return self.project_dir / "logs"

    @property
    def dataset_dir(self) -> Path | None:
        return self.path(self.dataset) if self.dataset else None

    @property
    def models_path(self) -> Path | None:
        return self.path(self.models_dir) if self.models_dir else None

    @property
    def ledger_file(self) -> Path | None:
        """The default ledger's SQLite file (no `db` URL set), else None."""
        return None if self.db else (self.project_dir / "ledger.sqlite").resolve()

    @property
    def db_url(self) -> str:
        if self.db:
            return self.db
        # URL.create escapes what a URL would misread in a path ('%41', '?', '#').
        from sqlalchemy import URL

        return URL.create("sqlite", database=str(self.ledger_file)).render_as_string(hide_password=False)

    def validate(self) -> None:
        _check_types(self, "")
        _check_types(self.slurm, "slurm.")
        _check_types(self.container, "container.")
        if self.segmenter not in SEGMENTER_NAMES:
            raise ConfigError(f"segmenter must be one of {', '.join(SEGMENTER_NAMES)}, not {self.segmenter!r}")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.heartbeat_seconds < 1 or self.lease_seconds < 3 * self.heartbeat_seconds:
            raise ConfigError("lease_seconds must be at least three heartbeats long")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.db_retry_seconds < 0:
            raise ConfigError("db_retry_seconds must be 0 or more")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        if self.nifti_input not in ("copy", "link"):
            raise ConfigError(f"nifti_input must be 'copy' or 'link', not {self.nifti_input!r}")
        if self.split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', not {self.split!r}")
        if self.container.runtime not in ("none", "apptainer", "singularity"):
            raise ConfigError(f"container.runtime must be none, apptainer or singularity, not {self.container.runtime!r}")
        if self.container.runtime != "none" and not self.container.image:
            raise ConfigError("container.image is required when container.runtime is set")


# What each annotation (a string, under `from __future__ import annotations`) accepts.
_TYPE_CHECKS: dict[str, tuple[str, Any]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "dict[str, Any]": ("a table", lambda v: isinstance(v, dict)),
}


def _check_types(obj: Any, prefix: str) -> None:
    """ConfigError naming the first key whose value has the wrong type (TOML can hold any type anywhere)."""
    for f in fields(obj):
        check = _TYPE_CHECKS.get(str(f.type))
        if check is None:
            continue                                   # project_dir, and the [slurm] / [container] tables
        what, ok = check
        value = getattr(obj, f.name)
        if not ok(value):
            raise ConfigError(f"{prefix}{f.name} must be {what}, not {value!r}")


def _from_table(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table, not {table!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)}")
    return cls(**table)


def load_config(project_dir: Path) -> Config:
    project_dir = Path(project_dir).resolve()
    path = project_dir / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no {CONFIG_NAME} in {project_dir}; run `batchseg init` first") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = dict(raw)
        slurm = _from_table(SlurmConfig, raw.pop("slurm", {}), "slurm")
        container = _from_table(ContainerConfig, raw.pop("container", {}), "container")
        raw.pop("project_dir", None)
        config = _from_table(Config, {"project_dir": project_dir, **raw}, "batchseg")
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    config.slurm, config.container = slurm, container
    config.validate()
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} to TOML")


def json_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def render_config(config: Config) -> str:
    top = {k: v for k, v in asdict(config).items() if k not in ("project_dir", "slurm", "container")}
    lines = ["# batchseg project file; paths are relative to this folder", ""]
    lines += [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for name in ("slurm", "container"):
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in asdict(getattr(config, name)).items()]
    return "\n".join(lines) + "\n"


def write_config(config: Config) -> Path:
    """Write batchseg.toml; readable by its owner only (0600) when the database URL holds a password."""
    config.validate()
    private = 0o600 if url_password(config.db) else 0o666
    return write_atomic(config.project_dir / CONFIG_NAME, render_config(config), permissions=private)


# user:password@ in any URL (SQLAlchemy's, libpq's): what `mask_passwords` hides.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s@]*)(?P<at>@)")


def url_password(url: str) -> str:
    """The password in a database URL ('' when there is none, or the URL does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not url:
        return ""
    try:
        return make_url(url).password or ""
    except (ArgumentError, ValueError):
        match = _URL_PASSWORD.search(url)
        return match.group("password") if match else ""


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: for messages, logs and tables."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('at')}", str(text))


def without_password(url: str) -> str:
    """The database URL without its password (the rest as given): what may travel to workers."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    # URL.set(password=None) keeps the password (None means "unchanged"); the NamedTuple copy drops it.
    return parsed._replace(password=None).render_as_string(hide_password=False) if parsed.password else url


def find_project(start: Path | None = None) -> Path:
    """The project folder: $BATCHSEG_PROJECT, else the nearest folder upwards holding batchseg.toml."""
    env = os.environ.get(PROJECT_ENV)
    if env:
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise ConfigError(f"no {CONFIG_NAME} in {here} or any folder above it; pass --project DIR or run `batchseg init`")
