"""The array job script: the task's command line, the #SBATCH directives, quoting, the template.

Every value from the project file or the command line that reaches the script is checked
(`check_value`) and quoted for where it goes: `shell_quote` for bash, `sbatch_quote` for an
#SBATCH line. The script itself is `arrays/task.sbatch` with its {{PLACEHOLDERS}} filled.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import site
import sys
import unicodedata
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...config import Config, SlurmConfig
from ..local import worker_command, worker_environment
from .client import SlurmError

CONTAINER_PYTHON = "python3"         # the image's interpreter: present in pytorch, conda, Debian, Ubuntu images


# -- values that reach the job script ----------------------------------------------------------

def check_value(value: Any, what: str) -> str:
    """`value` as text, refused when it holds a character no job script line can carry."""
    text = str(value)
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise SlurmError(f"{what} {text!r} contains a control character ({ch!r}: newline, tab, NUL, ...); "
                             "it cannot be put into a job script")
    return text


def shell_quote(value: Any, what: str) -> str:
    """One shell word that bash reads back as exactly `value`."""
    return shlex.quote(check_value(value, what))


_SBATCH_PLAIN = re.compile(r"[^\s'\"#\\]+")


def sbatch_quote(value: Any, what: str) -> str:
    """One token of an #SBATCH line that sbatch reads back as exactly `value`.

    sbatch (22.05, checked) splits #SBATCH lines at blanks, strips ' and " quotes, takes a
    backslash as an escape and an unquoted # as the start of a comment. Inside double
    quotes only \\ and \" need escaping. Nothing there is ever run by a shell.
    """
    text = check_value(value, what)
    if text and _SBATCH_PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# sbatch reads its options with getopt_long: a long option may be any unambiguous prefix of its
# name (--arr=0-9 is --array), and short options cluster (-Ha0-9 is -H -a 0-9) until one that
# takes a value, which takes the rest. These letters take a value (k's is optional but attached,
# so it too takes the rest); checked letter by letter against the real sbatch in
# tests/slurm/test_hostile.py (Slurm 22.05). A letter sbatch does not know is scanned past.
SBATCH_SHORT_WITH_VALUE = frozenset("aAbBcCdDeFGiJkLmMnNopqStwx")
# Options that would take the job's shape out of batchseg's hands.
SBATCH_REFUSED = {"array": "batchseg sets --array itself (use --tasks and --max-parallel)",
                  "wrap": "--wrap would replace the job script"}


def refused_sbatch_option(text: str) -> str | None:
    """Which refused option (array, wrap) sbatch would read in one argument, or None."""
    if text.startswith("--"):
        name = text[2:].split("=", 1)[0]
        return next((full for full in SBATCH_REFUSED if name and full.startswith(name)), None)
    for letter in text[1:]:
        if letter == "a":
            return "array"
        if letter in SBATCH_SHORT_WITH_VALUE:
            return None
    return None


def _option_groups(args: Sequence[str], what: str) -> list[list[str]]:
    """Split ['--mail-user', 'me@x', '--exclusive'] into one group per option, refusing --array and --wrap.

    Every argument that starts with '-' is read as an option, even where sbatch would take it as
    the previous option's value: that can only refuse more, never let an --array through.
    """
    groups: list[list[str]] = []
    for arg in args:
        text = check_value(arg, what)
        if text in ("-", "--"):
            raise SlurmError(f"{what}: {text!r} is not an option")
        if text.startswith("-"):
            refused = refused_sbatch_option(text)
            if refused:
                raise SlurmError(f"{what}: {text!r}: sbatch reads it as --{refused}; {SBATCH_REFUSED[refused]}")
            groups.append([text])
        elif groups:
            groups[-1].append(text)
        else:
            raise SlurmError(f"{what}: {text!r} is not an option (it must start with '-')")
    return groups


# -- the effective settings --------------------------------------------------------------------

_INT_FIELDS = {"cpus_per_task": 1, "max_parallel": 0, "signal_grace": 0, "workers_per_task": 1}


def effective_slurm(config: Config, overrides: Mapping[str, Any] | None = None) -> SlurmConfig:
    """config.slurm with command-line overrides applied (None means: keep the config's value)."""
    known = {f.name for f in dataclasses.fields(SlurmConfig)}
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise SlurmError(f"unknown Slurm setting {key!r}; known: {', '.join(sorted(known))}")
        changes[key] = value
    slurm = dataclasses.replace(config.slurm, **changes)
    for key, lowest in _INT_FIELDS.items():
        value = getattr(slurm, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise SlurmError(f"slurm.{key} must be a whole number >= {lowest}, not {value!r}")
    if slurm.signal_grace > 65535:
        raise SlurmError(f"slurm.signal_grace {slurm.signal_grace} is above Slurm's limit of 65535 seconds")
    if isinstance(slurm.extra_args, str) or not isinstance(slurm.extra_args, (list, tuple)):
        raise SlurmError(f"slurm.extra_args must be a list of strings, not {slurm.extra_args!r}")
    return slurm


def _job_name(config: Config) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", config.project_dir.name)[:48]
    return f"batchseg-{name}" if name else "batchseg"


def sbatch_directives(config: Config, slurm: SlurmConfig, array_spec: str,
                      sbatch_args: Sequence[str] = ()) -> list[str]:
    """The #SBATCH lines; sbatch_args (the command line's) come last, so they win over the config."""
    logs = config.logs_dir.resolve()
    if "%" in str(logs):
        raise SlurmError(f"the logs folder {logs} contains '%', which Slurm would read as a file name pattern")
    options: list[tuple[str, Any]] = [
        ("--job-name", _job_name(config)),
        ("--array", array_spec),
        ("--output", f"{logs}/%A_%a.out"),
        ("--open-mode", "append"),
    ]
    lines = [f"#SBATCH {name}={sbatch_quote(value, name)}" for name, value in options]
    lines.append("#SBATCH --requeue")
    if slurm.signal_grace > 0:
        lines.append(f"#SBATCH --signal=B:USR1@{slurm.signal_grace}")
    settings = [("--partition", slurm.partition), ("--account", slurm.account), ("--qos", slurm.qos),
                ("--time", slurm.time), ("--mem", slurm.mem), ("--cpus-per-task", slurm.cpus_per_task),
                ("--gres", slurm.gres), ("--constraint", slurm.constraint)]
    for name, value in settings:
        if value not in ("", None):
            lines.append(f"#SBATCH {name}={sbatch_quote(value, f'slurm {name[2:]}')}")
    for where, args in (("slurm.extra_args", slurm.extra_args), ("sbatch argument", sbatch_args)):
        for group in _option_groups(list(args), where):
            lines.append("#SBATCH " + " ".join(sbatch_quote(a, where) for a in group))
    return lines


# -- the command the task runs -----------------------------------------------------------------

def _source_root() -> Path | None:
    """The folder holding the batchseg package when it is not an installed one (a source checkout)."""
    import batchseg

    root = Path(batchseg.__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()] if p}
    return None if root in installed else root


def container_argv(config: Config, slurm: SlurmConfig) -> list[str]:
    """`apptainer exec [options] --bind ... IMAGE`, or [] without a container.

    The project, dataset, output and models folders are bound at their own paths, so every
    absolute path in the project file means the same inside the container.
    """
    box = config.container
    if box.runtime in ("", "none"):
        return []
    # config.validate() refuses these too, but a Config built in code (the tests', a library
    # user's) reaches here unvalidated, and a wrong runtime must not become a job script.
    if box.runtime not in ("apptainer", "singularity"):
        raise SlurmError(f"container.runtime must be none, apptainer or singularity, not {box.runtime!r}")
    if not box.image:
        raise SlurmError("container.image is required when container.runtime is set")
    options = list(box.options) if box.options else (["--nv"] if "gpu" in (slurm.gres or "") else [])
    binds: list[str] = []
    for folder in (config.project_dir, config.dataset_dir, config.out_dir, config.models_path):
        if folder is None:
            continue
        path = str(Path(folder).resolve())
        if "," in path or ":" in path:
            raise SlurmError(f"cannot bind {path} into the container: ',' and ':' separate bind specifications")
        if path not in binds:
            binds.append(path)
    for spec in box.binds:
        text = check_value(spec, "container bind")
        if "," in text:
            raise SlurmError(f"container bind {text!r} contains ',': give each bind as its own list item")
        if text not in binds:
            binds.append(text)
    return [box.runtime, "exec", *options, "--bind", ",".join(binds), box.image]


def task_command(config: Config, slurm: SlurmConfig) -> list[str]:
    """argv of the task: the submitting interpreter itself, or the container's python3.

    With workers_per_task N > 1 it is `work --workers N`: one parent that starts N workers over
    the task's GPUs, passes Slurm's signals on to them and exits 0 only when all of them did.
    """
    prefix = container_argv(config, slurm)
    python = CONTAINER_PYTHON if prefix else os.path.abspath(sys.executable)
    group = ["--workers", str(slurm.workers_per_task)] if slurm.workers_per_task > 1 else []
    return prefix + worker_command(config, python=python) + group


# -- rendering ---------------------------------------------------------------------------------

_ARRAY_SPEC = re.compile(r"\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?")


def load_template(name: str = "task.sbatch") -> str:
    try:
        from importlib.resources import files

        return files("batchseg.arrays").joinpath(name).read_text()
    except ModuleNotFoundError:
        # A source checkout that was never installed: arrays/ sits beside the package.
        import batchseg

        return (Path(batchseg.__file__).resolve().parent.parent / "arrays" / name).read_text()


def fill_template(template: str, values: Mapping[str, str]) -> str:
    names = set(re.findall(r"\{\{([A-Z_]+)\}\}", template))
    if names != set(values):
        raise SlurmError(f"template placeholders {sorted(names)} do not match the values {sorted(values)}")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], template)


def render_script(config: Config, *, tasks: int, array_spec: str, overrides: dict | None = None,
                  sbatch_args: Sequence[str] = ()) -> str:
    """The array job script for `array_spec`; raises SlurmError for a value it cannot make safe."""
    if not _ARRAY_SPEC.fullmatch(array_spec):
        raise SlurmError(f"bad array specification {array_spec!r}")
    slurm = effective_slurm(config, overrides)
    # PYTHONSAFEPATH and a --db override (without its password): see worker_environment.
    environment = [f"export {name}={shell_quote(value, name)}" for name, value in worker_environment(config).items()]
    root = _source_root()
    if root is not None and not container_argv(config, slurm):
        # Not installed (a source checkout): let the task import the same batchseg.
        environment.append(f"export PYTHONPATH={shell_quote(str(root), 'source folder')}${{PYTHONPATH:+:$PYTHONPATH}}")
    values = {
        "SBATCH": "\n".join(sbatch_directives(config, slurm, array_spec, sbatch_args)),
        "TASKS": str(int(tasks)),
        "ARRAY_SPEC": array_spec,
        "ENVIRONMENT": "\n".join(environment),
        "PROJECT_DIR": shell_quote(str(config.project_dir.resolve()), "project folder"),
        "COMMAND": " ".join(shell_quote(a, "task command argument") for a in task_command(config, slurm)),
    }
    return fill_template(load_template(), values)
