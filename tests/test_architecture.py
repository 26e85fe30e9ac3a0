"""docs/architecture.md holds: every module in a room, imports only along its arrows, no circle, its error table.

The rooms table and the error-class table are read from the document itself, so the page cannot
drift from the code: a new module, a new import between rooms or a new error class fails here
until the page says so. Imports are read with `ast` from every file of the package, wherever
they stand (top level, inside functions, under TYPE_CHECKING).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from batchseg.errors import ERROR_CLASSES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "batchseg"
DOC = REPO / "docs" / "architecture.md"

# The rules: no table may allow these (source room, target room; None: any room).
FORBIDDEN = [("pipeline", "ledger"), ("ledger", "pipeline"), (None, "cli"),
             ("worker", "executors.local"), ("worker", "executors.slurm")]


# -- reading the document --------------------------------------------------------------------------

def doc_table(first_header: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table in DOC whose first header cell is `first_header`."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            rows = []
            for row in lines[n + 2:]:                          # after the header and its |---| line
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"{DOC} has no table whose first column is {first_header!r}")


def quoted(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def rooms_from_doc() -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """room -> its files (paths or folders ending in /), and room -> the rooms it may import."""
    files: dict[str, list[str]] = {}
    arrows: dict[str, set[str]] = {}
    for cells in doc_table("room"):
        assert len(cells) == 4, f"rooms table row {cells} does not have 4 cells"
        (room,) = quoted(cells[0])
        assert room not in files, f"room {room} is listed twice"
        files[room] = quoted(cells[1])
        arrows[room] = set(quoted(cells[3]))
        assert arrows[room] or cells[3] == "nothing", f"room {room}: 'may import' is neither rooms nor 'nothing'"
    return files, arrows


# -- reading the code --------------------------------------------------------------------------------

def package_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod.
            targets += [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                        for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:             # batchseg.x.y.Name -> batchseg.x.y
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def room_of(path: Path, files: dict[str, list[str]]) -> str | None:
    """The room whose files name `path`: a file named exactly beats the folder holding it."""
    rel = path.relative_to(REPO).as_posix()
    best, best_len = None, -1
    for room, entries in files.items():
        for entry in entries:
            hit = rel == entry or (entry.endswith("/") and rel.startswith(entry))
            if hit and len(entry) > best_len:
                best, best_len = room, len(entry)
    return best


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}                                 # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                circle = visit(nxt)
                if circle:
                    return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            circle = visit(node)
            if circle:
                return circle
    return None


# -- the tests -------------------------------------------------------------------------------------

def test_the_import_reader_sees_imports_wherever_they_stand() -> None:
    graph = import_graph()
    assert "batchseg.ledger" in graph["batchseg.worker"]                 # top level
    assert "batchseg.worker" in graph["batchseg.cli"]                    # inside a function
    assert "batchseg.config" in graph["batchseg.models"]                 # under TYPE_CHECKING
    assert "batchseg.labels" in graph["batchseg.segmenters.reference"]   # `from .. import labels`
    assert "batchseg" in graph["batchseg.pipeline"]                      # `from . import __version__`
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_circle() -> None:
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_every_module_sits_in_a_room_of_the_document() -> None:
    files, _ = rooms_from_doc()
    for room, entries in files.items():
        assert entries, f"room {room} names no files"
        for entry in entries:
            assert (REPO / entry).exists(), f"room {room} names {entry}, which does not exist"
    homeless = [str(p.relative_to(REPO)) for p in package_modules().values() if room_of(p, files) is None]
    assert not homeless, f"modules in no room of {DOC.name} (add them to its rooms table): {homeless}"


def test_imports_between_rooms_are_the_arrows_of_the_document() -> None:
    files, arrows = rooms_from_doc()
    modules = package_modules()
    wrong, used = [], set()
    for name, targets in import_graph().items():
        source = room_of(modules[name], files)
        for target in sorted(targets):
            room = room_of(modules[target], files)
            if room == source:
                continue
            used.add((source, room))
            if room not in arrows.get(source or "", set()):
                wrong.append(f"{name} imports {target}: {source or '(no room)'} -> {room or '(no room)'} "
                             f"is no arrow of {DOC.name}")
    # The page says what is: an arrow no import uses any more goes too.
    wrong += [f"{DOC.name} lets {source} import {room}, and nothing there does: drop the arrow"
              for source, targets in sorted(arrows.items()) for room in sorted(targets) if (source, room) not in used]
    assert not wrong, "\n".join(wrong)


def test_the_arrows_keep_the_house_rules_and_run_one_way() -> None:
    files, arrows = rooms_from_doc()
    for room, targets in arrows.items():
        assert targets <= set(files), f"room {room} may import unknown rooms {sorted(targets - set(files))}"
        assert room not in targets, f"room {room} lists itself"
    for source, target in FORBIDDEN:
        breaking = [room for room in arrows if (source is None or room == source) and target in arrows[room]]
        assert not breaking, f"{DOC.name} lets {breaking} import {target}"
    circle = find_circle(arrows)
    assert circle is None, "the rooms table allows a circle: " + " -> ".join(circle or [])


def test_the_document_error_table_is_errors_error_classes() -> None:
    table = {}
    for cells in doc_table("error class"):
        (name,) = quoted(cells[0])
        assert cells[1] in ("yes", "no"), f"{name}: retried must be yes or no, not {cells[1]!r}"
        table[name] = cells[1] == "yes"
    assert table == {name: retried for name, (retried, _) in ERROR_CLASSES.items()}


@pytest.mark.parametrize("name", ["README.md", "batchseg"])
def test_nothing_cites_the_design_notes_outside_the_repository(name: str) -> None:
    path = REPO / name
    texts = [path] if path.is_file() else sorted(path.rglob("*.py"))
    citing = [str(p.relative_to(REPO)) for p in texts if re.search(r"\b(DESIGN|CONTEXT)\.md\b", p.read_text())]
    assert not citing, f"these cite DESIGN.md or CONTEXT.md, which are not in the repository: {citing}"
