"""The README's command table says only what the CLI does: every command and option in it exists."""
from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from batchseg.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def command_table() -> list[str]:
    """The code spans of the first column of the table under `## Commands`."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    spans = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first = re.split(r"(?<!\\)\|", line)[1]
            spans += [span.replace("\\|", "|") for span in re.findall(r"`([^`]+)`", first)]
    return spans


def command_path(span: str) -> list[str]:
    """The leading words of a span that name a (sub)command: `models check [--models DIR]` -> models, check."""
    path: list[str] = []
    group: click.Command = cli
    for word in span.split():
        if not isinstance(group, click.Group) or word not in group.commands:
            break
        path.append(word)
        group = group.commands[word]
    return path


def test_every_command_and_option_in_the_readme_table_exists() -> None:
    spans = command_table()
    assert len(spans) >= 15, spans
    missing = []
    for span in spans:
        path = command_path(span)
        if not path:
            missing.append(f"{span!r}: no such command")
            continue
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, result.output
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.output):
                missing.append(f"{' '.join(path)} {option}")
    assert missing == [], "in the README's command table but not in `--help`"
    listed = {tuple(command_path(span)[:1]) for span in spans}
    assert {(name,) for name in cli.commands} <= listed, "every command has a row in the README's table"
