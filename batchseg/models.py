"""SPINEPS model weights: where they are, whether they are complete, how to fetch them.

Compute nodes often have no internet, and SPINEPS downloads missing weights on first use,
so a batch should check before it starts. `check_models` inspects folders only: it never
imports SPINEPS and never opens a connection. `download_models` is the one place that does,
through SPINEPS's own download code, on a machine that has the network.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SetupError

if TYPE_CHECKING:
    from .config import Config

ENV_MODELS = "SPINEPS_SEGMENTOR_MODELS"
_RELEASES_URL = "https://github.com/Hendrik-code/spineps/releases/download"

INSTALL_HINT = (
    "install the extra into this Python: pip install 'batchseg[spineps]' "
    "(CPU-only machines: install torch first, then pip install spineps -c constraints/spineps-cpu.txt "
    "and pip uninstall -y torchvision; see README)"
)


class SpinepsMissing(SetupError):
    """SPINEPS (the `spineps` extra) is not importable in this Python."""


def import_spineps():
    """Import SPINEPS, or raise SpinepsMissing telling how to install it."""
    try:
        import spineps
    except ImportError as exc:
        raise SpinepsMissing(f"SPINEPS is not installed ({exc}); {INSTALL_HINT}") from exc
    return spineps


@dataclass(frozen=True)
class ModelRelease:
    kind: str        # semantic | instance | labeling
    model_id: str    # the id SPINEPS accepts
    folder: str      # the folder SPINEPS extracts the release into, under its models directory
    url: str


# The releases SPINEPS 2.1.3 fetches for the sagittal T2w pipeline
# (spineps/utils/auto_download.py: download_names[id] + "_" + the phase's release tag).
MODEL_RELEASES: dict[str, ModelRelease] = {
    "t2w": ModelRelease("semantic", "t2w", "T2w_semantic_v1.0.9", f"{_RELEASES_URL}/v1.0.9/t2w.zip"),
    "instance": ModelRelease("instance", "instance", "instance_sagittal_v1.2.0", f"{_RELEASES_URL}/v1.2.0/instance.zip"),
    "t2w_labeling": ModelRelease("labeling", "t2w_labeling", "T2w_labeling_v1.4.0",
                                 f"{_RELEASES_URL}/v1.4.0/labeling.zip"),
}

# What each kind's inference_config.json must say (`modeltype`), and which files hold its weights.
_KIND_MODELTYPE = {"semantic": "nnunet", "instance": "unet", "labeling": "classifier"}


@dataclass
class ModelCheck:
    ok: bool
    found: dict[str, Path] = field(default_factory=dict)   # kind -> folder holding inference_config.json
    missing: list[str] = field(default_factory=list)        # release folder names or given paths
    message: str = ""                                       # one line for people


def disabled(value: str | Path | None) -> bool:
    """True for a model option that switches the model off (labeling only)."""
    return value is None or str(value).strip().lower() in ("", "none", "off", "false")


def looks_like_path(value: str | Path) -> bool:
    # SPINEPS's own rule (get_models.looks_like_model_path): a separator means a folder, else an id
    return isinstance(value, Path) or "/" in str(value) or "\\" in str(value)


def default_models_dir() -> Path | None:
    """The folder SPINEPS would use: $SPINEPS_SEGMENTOR_MODELS, else <spineps package>/models."""
    env = os.environ.get(ENV_MODELS)
    if env:
        return Path(env)
    spec = find_spec("spineps")  # locates the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _config_dir(folder: Path) -> tuple[Path | None, str]:
    """The folder holding the model's one inference_config.json, or None and why not."""
    if not folder.is_dir():
        return None, f"{folder} does not exist"
    configs = sorted(folder.glob("**/inference_config.json"))
    if not configs:
        return None, f"{folder} has no inference_config.json"
    if len(configs) > 1:
        return None, f"{folder} holds {len(configs)} inference_config.json files (SPINEPS needs exactly one)"
    return configs[0].parent, ""


def _weights_problem(config_dir: Path, kind: str) -> str:
    """Why the folder cannot serve as a `kind` model, or '' when its files are all there."""
    try:
        config = json.loads((config_dir / "inference_config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{config_dir}/inference_config.json is unreadable ({exc})"
    modeltype = str(config.get("modeltype", ""))
    if modeltype != _KIND_MODELTYPE[kind]:
        return f"{config_dir} is a {modeltype or 'unknown'} model, a {kind} model must be {_KIND_MODELTYPE[kind]}"
    if kind == "semantic":
        for name in ("plans.json", "dataset.json"):
            if not (config_dir / name).is_file():
                return f"{config_dir} lacks {name}"
        if not any(config_dir.glob("fold_*/checkpoint_final.pth")) and not any(config_dir.glob("fold_*/checkpoint_best.pth")):
            return f"{config_dir} has no fold_*/checkpoint_final.pth"
    elif kind == "instance":
        ckpts = list(config_dir.glob("**/*weights*.ckpt"))
        if len(ckpts) != 1:
            return f"{config_dir} needs exactly one *weights*.ckpt, found {len(ckpts)}"
    elif not any(config_dir.glob("**/*val_f1=*valf1-weights.ckpt")):
        return f"{config_dir} has no *val_f1=*valf1-weights.ckpt"
    return ""


def _by_folder_name(models_dir: Path, model_id: str) -> Path | None:
    # SPINEPS also accepts any model folder under its models directory by its (lower-cased) name
    for config in models_dir.glob("**/inference_config.json"):
        folder = config.parent
        name = folder.parent.name if "nnUNetPlans" in folder.name else folder.name
        if name.lower() == model_id.lower():
            return folder
    return None


def resolve_model(kind: str, value: str | Path, models_dir: Path | None) -> tuple[Path | None, str, str]:
    """Find one model on disk without the network: (config folder or None, missing name, problem)."""
    if looks_like_path(value):
        folder = Path(value).expanduser()
        config_dir, problem = _config_dir(folder)
        if config_dir is not None:
            problem = _weights_problem(config_dir, kind)
        return (config_dir if not problem else None), str(folder), problem
    model_id = str(value).lower()
    release = MODEL_RELEASES.get(model_id)
    name = release.folder if release else model_id
    if models_dir is None:
        return None, name, f"no models folder (set --models / models_dir or ${ENV_MODELS})"
    if release is not None and release.kind != kind:
        return None, name, f"{model_id!r} is a {release.kind} model, not a {kind} model"
    folder = models_dir / release.folder if release else _by_folder_name(models_dir, model_id)
    if folder is None:
        return None, name, f"no model folder named {model_id!r} in {models_dir}"
    config_dir, problem = _config_dir(folder)
    if config_dir is not None:
        problem = _weights_problem(config_dir, kind)
    return (config_dir if not problem else None), name, problem


def check_models(models_dir: Path | None, semantic: str | Path = "t2w", instance: str | Path = "instance",
                 labeling: str | Path | None = "t2w_labeling") -> ModelCheck:
    """Check that every model SPINEPS will need is on disk, touching neither SPINEPS nor the network.

    `models_dir` None means the folder SPINEPS itself would use (`default_models_dir`).
    """
    models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
    wanted = {"semantic": semantic, "instance": instance, "labeling": labeling}
    check = ModelCheck(ok=True)
    problems: list[str] = []
    for kind, value in wanted.items():
        if kind == "labeling" and disabled(value):
            continue
        if disabled(value):
            check.missing.append(f"<no {kind} model>")
            problems.append(f"the {kind} model cannot be switched off")
            continue
        folder, name, problem = resolve_model(kind, value, models_dir)
        if folder is None:
            check.missing.append(name)
            problems.append(problem)
        else:
            check.found[kind] = folder
    where = str(models_dir) if models_dir else "<no models folder>"
    if check.missing:
        check.ok = False
        target = where if models_dir else "DIR"
        check.message = (f"missing SPINEPS weights in {where}: {', '.join(check.missing)} ({'; '.join(problems)}); "
                         f"on a machine with internet run `batchseg models download --to {target}` and copy the folder")
    else:
        check.message = f"SPINEPS weights complete in {where}: " + ", ".join(
            f"{kind}={folder}" for kind, folder in check.found.items())
    return check


def check_for_config(config: "Config") -> ModelCheck:
    """check_models with a project's models folder and segmenter options."""
    options = config.segmenter_options
    return check_models(config.models_path, semantic=options.get("semantic", "t2w"),
                        instance=options.get("instance", "instance"),
                        labeling=options.get("labeling", "t2w_labeling"))


def download_models(to: Path, model_ids: list[str] | None = None) -> list[Path]:
    """Fetch the released weights into `to` with SPINEPS's own downloader; return the model folders.

    Needs the network. A folder that is already there is kept as it is (SPINEPS's rule too).
    """
    import_spineps()
    from spineps.utils import auto_download

    to = Path(to).expanduser()
    to.mkdir(parents=True, exist_ok=True)
    folders = []
    for model_id in model_ids or list(MODEL_RELEASES):
        release = MODEL_RELEASES[model_id]
        out = to / release.folder
        auto_download.download_weights(release.url, out)
        folders.append(out)
    return folders


__all__ = ["MODEL_RELEASES", "check_for_config", "ModelRelease", "ModelCheck", "SpinepsMissing", "check_models", "download_models",
           "default_models_dir", "import_spineps", "resolve_model", "disabled", "ENV_MODELS", "INSTALL_HINT"]
