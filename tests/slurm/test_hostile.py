"""`batchseg submit --dry-run` with hostile values: quoted so that bash and sbatch read the literal, or refused."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from batchseg.config import write_config
from tests.conftest import batchseg

NASTY = "it's \"quoted\" #not-a-comment $(touch PWNED) `touch PWNED2`; z & y | x \\ end"
NASTY_DIR = "we'ird \"p\" $(touch PWNED3) `touch PWNED4`; x & y #z"


def scontrol_field(job: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    # fields that may hold blanks (JobName, Comment, StdOut) are the last ones on their line
    for line in out.splitlines():
        line = " " + line.strip()
        at = line.find(f" {name}=")
        if at >= 0:
            return line[at + len(name) + 2:].rstrip(" ")
    raise AssertionError(f"no {name} in:\n{out}")


def test_hostile_values_are_quoted_for_bash_and_sbatch(make_project, tmp_path: Path) -> None:
    project = make_project(studies=1, name=NASTY_DIR)
    config = project.config
    config.slurm.extra_args = [f"--comment={NASTY}", "--job-name", NASTY]
    write_config(config)
    folder = str(config.project_dir.resolve())

    dry = batchseg("submit", "--array", "--dry-run", "--project", folder)
    script = dry.stdout
    assert script.startswith("#!/bin/bash\n") and project.ledger.submissions() == []
    path = tmp_path / "rendered.sh"
    path.write_text(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    # the shell side: let bash parse the exec line's words and print them
    argv_file = tmp_path / "argv.bin"
    printing = script.replace("\nexec ", "\nprintf '%s\\0' ", 1).rstrip("\n") + ' > "$ARGV_OUT"\n'
    path.write_text(printing)
    subprocess.run(["bash", str(path)], check=True, capture_output=True, cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "ARGV_OUT": str(argv_file)})
    argv = argv_file.read_bytes().decode().split("\0")[:-1]
    assert argv[0].endswith("python") or argv[0] == sys.executable
    assert argv[1:] == ["-m", "batchseg", "work", "--project", folder]

    # the #SBATCH side: the real sbatch reads the literal values back
    held = subprocess.run(["sbatch", "--parsable", "--hold"], input=script, capture_output=True, text=True,
                          cwd=folder)
    assert held.returncode == 0, held.stderr
    job = held.stdout.strip().split(";")[0]
    try:
        assert scontrol_field(job, "Comment") == NASTY
        assert scontrol_field(job, "JobName") == NASTY
        assert scontrol_field(job, "StdOut").startswith(str(config.logs_dir.resolve()) + "/")
    finally:
        subprocess.run(["scancel", job], check=False)
    assert not list(tmp_path.rglob("PWNED*")), "a command substitution ran"


def test_values_that_cannot_be_made_safe_are_refused(make_project) -> None:
    project = make_project(studies=1)
    config = project.config
    config.slurm.partition = "gpu\n#SBATCH --account=someone-else"
    write_config(config)
    result = batchseg("submit", "--array", "--dry-run", "--project", str(config.project_dir), check=False)
    assert result.returncode != 0
    assert "control character" in result.stderr and "#!/bin/bash" not in result.stdout
    result = batchseg("submit", "--array", "--dry-run", "--project", str(config.project_dir),
                      "--partition", "debug", "--sbatch-arg=--array=0-99", check=False)
    assert result.returncode != 0 and "--array" in result.stderr
    assert project.ledger.submissions() == []


def sbatch_reads(args: list[str], script: Path) -> str | None:
    """What the real sbatch reads in `args`: 'array', 'wrap', 'invalid' (it refuses the option) or None.

    A bogus value makes sbatch name what it read; `--test-only` submits nothing (it asks the
    controller when the job would start).
    """
    out = subprocess.run(["sbatch", "--test-only", *args, str(script)], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    text = out.stdout + out.stderr
    for said, read in (("Invalid job array specification", "array"), ("not permitted with --wrap", "wrap"),
                       ("invalid option", "invalid")):
        if said in text:
            return read
    return None


def refused(args: list[str]) -> str | None:
    """What batchseg refuses `args` as ('array', 'wrap'), or None when it takes them."""
    import re

    from batchseg.executors.slurm.job_script import SlurmError, _option_groups

    try:
        _option_groups(args, "sbatch argument")
    except SlurmError as exc:
        found = re.search(r"reads it as --(\w+)", str(exc))
        return found.group(1) if found else "refused"
    return None


def test_array_and_wrap_are_refused_exactly_where_sbatch_reads_them(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    # every short letter before an 'a' (-Habogus is -H -a bogus; -pabogus is a partition), clusters,
    # and every abbreviation of --array and --wrap, as sbatch's getopt_long reads them
    letters = [chr(c) for c in (*range(ord("a"), ord("z") + 1), *range(ord("A"), ord("Z") + 1))]
    cases = [[f"-{letter}abogus"] for letter in letters if letter not in "hV"]   # -h and -V only print and exit
    cases += [["-vHabogus"], ["-HQsabogus"], ["-Hpabogus"], ["-Hkabogus"], ["-Wcabogus"]]
    cases += [[f"--{'array'[:n]}=bogus"] for n in range(2, 6)] + [["--array", "bogus"], ["--arr", "bogus"]]
    cases += [[f"--{'wrap'[:n]}=true"] for n in range(2, 5)]
    cases += [["--acctg-freq=task=30"], ["--account=lab"], ["--wait"], ["--wckey=x"], ["-p", "debug"]]
    disagreements = []
    for args in cases:
        read = sbatch_reads(args, script)
        if read == "invalid":
            continue      # an option sbatch does not know: it refuses the whole submission itself
        ours = refused(args)
        if ours != read:
            disagreements.append((args, read, ours))
    assert disagreements == [], "(arguments, what sbatch reads, what batchseg refuses)"
    assert refused(["--arr=0-999"]) == refused(["-Ha0-999"]) == "array" and refused(["--wra="]) == "wrap"
