"""Fetch the RSNA 2024 Lumbar Spine competition data from Kaggle: all of it, or only some studies.

Besides `models download`, the only code in batchseg that opens a connection, and only
through the official `kaggle` client (the `kaggle` extra, imported lazily). Two ways:

* the whole competition archive (~35 GB): the client downloads it (it resumes by itself),
  then it is unpacked member by member;
* some studies: the competition's file listing (paged, cached in DIR/.batchseg_download/),
  the split's CSVs, then one request per DICOM file of the chosen studies' Sagittal T2/STIR
  series (every series with `all_series`).

Every file is written under a temporary name and renamed into place, so a file that exists
is complete; one that is present with the size the listing gives is never fetched again.
Study ids and listing names are checked before they become paths.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import Any, Callable, Iterable, Iterator

from .dataset import SAGITTAL_T2, DatasetError, Series, is_rsna_id, printable_id, read_series_table
from .errors import one_line
from .files import open_atomic, write_atomic

COMPETITION = "rsna-2024-lumbar-spine-degenerative-classification"
INSTALL_HINT = "pip install 'batchseg[kaggle]'"
STATE_DIR = ".batchseg_download"
# The listing endpoint's largest page (kaggle-cli docs: `competitions files --page-size`, max 200).
PAGE_SIZE = 200
SPLIT_CSVS = {
    "train": ("train_series_descriptions.csv", "train.csv", "train_label_coordinates.csv"),
    "test": ("test_series_descriptions.csv",),
}
NO_CREDENTIALS = ("no Kaggle credentials found: put kaggle.json (from https://www.kaggle.com/settings/api) in "
                  "~/.kaggle/, or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN")
# Transient answers (rate limit, server trouble) get a few more tries, further apart each time.
RETRY_STATUSES = {429, 500, 502, 503, 504}
RETRIES = 3
RETRY_BASE_SECONDS = 1.0

_COMPETITION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_INSTANCE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.dcm$", re.IGNORECASE)


class DownloadError(Exception):
    """A problem that stops the download. `code` is the exit status: 2 setup or usage, 1 otherwise."""

    def __init__(self, message: str, code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status    # Kaggle's HTTP status, when it answered with one


@dataclass(frozen=True)
class RemoteFile:
    name: str           # path inside the competition, '/'-separated
    size: int | None    # bytes, when the listing says


@dataclass
class Progress:
    total: int
    done: int = 0        # downloaded in this run
    present: int = 0     # already there and complete
    failed: int = 0
    bytes: int = 0       # downloaded in this run

    @property
    def finished(self) -> int:
        return self.done + self.present + self.failed


@dataclass
class FetchResult:
    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (name, one-line reason)


@dataclass
class StudiesResult:
    studies: list[str]
    series: list[tuple[str, str]]          # (study, series) whose files were fetched
    files: FetchResult
    csvs: FetchResult
    warnings: list[str] = field(default_factory=list)


@dataclass
class ArchiveResult:
    archive: Path | None
    extracted: int = 0
    present: int = 0
    already_complete: bool = False


# -- checks before anything touches the network or a path ----------------------------------------

def check_competition(name: str) -> str:
    if not _COMPETITION_PATTERN.match(name):
        raise DownloadError(f"competition {printable_id(name)!r}: not a Kaggle competition name", code=2)
    return name


def check_studies(ids: Iterable[str]) -> list[str]:
    """The ids stripped and deduplicated in order; any id that is not a plain number stops the run."""
    cleaned: list[str] = []
    bad: list[str] = []
    for raw in ids:
        study = raw.strip()
        if not is_rsna_id(study):
            bad.append(repr(printable_id(study)))
        elif study not in cleaned:
            cleaned.append(study)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DownloadError(f"study list: not a plain decimal study id: {shown}", code=2)
    return cleaned


def local_path(root: Path, name: str) -> Path:
    """Where a competition file goes under `root`; a name that could leave `root` is refused."""
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\\" in part or any(ord(c) < 32 for c in part):
            raise DownloadError(f"refusing the file name {printable_id(name)!r} from Kaggle: not a plain relative path")
    return root.joinpath(*parts)


def is_complete(path: Path, size: int | None) -> bool:
    """Present, and as large as the listing says when it says (a file that exists was renamed into place).

    A symbolic link is never complete: it is replaced by the real file, not written through.
    """
    try:
        stat = path.lstat()
    except OSError:
        return False
    return S_ISREG(stat.st_mode) and (size is None or stat.st_size == size)


# -- choosing the files of some studies (pure) -----------------------------------------------------

def wanted_series(table: dict[str, list[Series]], studies: list[str], all_series: bool,
                  csv_name: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(study, series) pairs to fetch: each study's Sagittal T2/STIR series (all with `all_series`).

    Every Sagittal T2/STIR series of a study is fetched: when there are several, `init` picks
    one by slice count, which needs the files.
    """
    pairs: list[tuple[str, str]] = []
    warnings: list[str] = []
    for study in studies:
        series = table.get(study)
        if not series:
            warnings.append(f"study {study}: not in {csv_name}; nothing to fetch")
            continue
        chosen = series if all_series else [s for s in series if s.description == SAGITTAL_T2]
        if not chosen:
            found = ", ".join(sorted({s.description or "(empty)" for s in series}))
            warnings.append(f"study {study}: no {SAGITTAL_T2} series (found: {found}); nothing to fetch")
        pairs.extend((study, s.series_id) for s in chosen)
    return pairs, warnings


def select_files(listing: Iterable[RemoteFile], pairs: list[tuple[str, str]],
                 split: str) -> tuple[list[RemoteFile], list[str]]:
    """The listing's DICOM files of those series, in listing order; a series the listing lacks is a warning."""
    wanted = set(pairs)
    counts = dict.fromkeys(pairs, 0)
    selected: list[RemoteFile] = []
    prefix = f"{split}_images"
    for remote in listing:
        parts = remote.name.split("/")
        if len(parts) != 4 or parts[0] != prefix:
            continue
        key = (parts[1], parts[2])
        if key in wanted and _INSTANCE_PATTERN.match(parts[3]):
            selected.append(remote)
            counts[key] += 1
    warnings = [f"study {study} series {series}: no files in the competition listing"
                for (study, series), n in counts.items() if n == 0]
    return selected, warnings


# -- the listing cache ---------------------------------------------------------------------------

def _listing_cache(root: Path, competition: str) -> Path:
    return root / STATE_DIR / f"listing-{competition}.tsv"


def read_listing(path: Path) -> list[RemoteFile]:
    """The cached listing; a cache that is not what write_listing wrote stops the run with one line."""
    files = []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            name, tab, size = line.partition("\t")
            if not name or not tab or not (size == "" or size.isascii() and size.isdecimal()):
                raise ValueError(f"line {number} is not '<name><TAB><size>'")
            files.append(RemoteFile(name, int(size) if size else None))
    except (OSError, ValueError) as exc:   # UnicodeDecodeError is a ValueError
        raise DownloadError(f"the cached file listing {path} is corrupted ({one_line(exc, 120)}): "
                            "run again with --refresh-listing", code=2) from None
    return files


def write_listing(path: Path, files: list[RemoteFile]) -> None:
    write_atomic(path, (f"{f.name}\t{'' if f.size is None else f.size}\n" for f in files))


def load_listing(source: "KaggleSource", root: Path, competition: str, *, refresh: bool,
                 report: Callable[[str], None], on_page: Callable[[int, int], None] | None = None) -> list[RemoteFile]:
    """The competition's files: from the cache of a previous run, else page by page from Kaggle."""
    cache = _listing_cache(root, competition)
    if cache.exists() and not refresh:
        files = read_listing(cache)
        report(f"file listing: {len(files)} files, cached in {cache} (--refresh-listing asks Kaggle again)")
        return files
    files = []
    for page, batch in enumerate(source.list_pages(competition), start=1):
        files.extend(batch)
        if on_page:
            on_page(page, len(files))
    write_listing(cache, files)
    report(f"file listing: {len(files)} files from Kaggle, cached in {cache}")
    return files


# -- fetching files one by one ---------------------------------------------------------------------

def fetch_files(source: "KaggleSource", competition: str, root: Path, files: list[RemoteFile], *,
                jobs: int = 4, on_progress: Callable[[Progress], None] | None = None) -> FetchResult:
    """Download each file not already complete under `root`, `jobs` at a time.

    A failed file is recorded and the others go on; a refused credential stops everything.
    """
    result = FetchResult()
    progress = Progress(total=len(files))
    todo: list[tuple[RemoteFile, Path]] = []
    for remote in files:
        target = local_path(root, remote.name)
        if is_complete(target, remote.size):
            result.present.append(remote.name)
            progress.present += 1
        else:
            todo.append((remote, target))
    staging = root / STATE_DIR / "staging"
    shutil.rmtree(staging, ignore_errors=True)   # leftovers of an interrupted run: never complete files
    staging.mkdir(parents=True, exist_ok=True)
    if on_progress:
        on_progress(progress)

    def one(index: int, remote: RemoteFile, target: Path) -> int:
        folder = staging / str(index)
        got = source.fetch_file(competition, remote.name, folder)
        size = got.stat().st_size
        if remote.size is not None and size != remote.size:
            shutil.rmtree(folder, ignore_errors=True)
            raise DownloadError(f"{remote.name}: got {size} bytes, the listing says {remote.size}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, target)
        shutil.rmtree(folder, ignore_errors=True)
        return size

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(one, i, remote, target): remote for i, (remote, target) in enumerate(todo)}
        try:
            for future in as_completed(futures):
                remote = futures[future]
                exc = future.exception()
                if exc is None:
                    result.downloaded.append(remote.name)
                    progress.done += 1
                    progress.bytes += future.result()
                elif isinstance(exc, DownloadError) and exc.code == 2:
                    raise exc
                else:
                    result.failed.append((remote.name, _failure(exc)))
                    progress.failed += 1
                if on_progress:
                    on_progress(progress)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _failure(exc: BaseException) -> str:
    """What a failed file's line in the summary says."""
    return one_line(exc.message if isinstance(exc, DownloadError) else f"{type(exc).__name__}: {exc}", 300)


# -- the two ways --------------------------------------------------------------------------------

def download_studies(source: "KaggleSource", root: Path, *, competition: str = COMPETITION, split: str = "train",
                     studies: list[str] | None = None, limit: int | None = None, all_series: bool = False,
                     jobs: int = 4, refresh_listing: bool = False, report: Callable[[str], None] = lambda s: None,
                     on_page: Callable[[int, int], None] | None = None,
                     on_progress: Callable[[Progress], None] | None = None) -> StudiesResult:
    """The split's CSVs and the DICOM files of the listed studies (every study of the CSV when None).

    `report` gets one line per phase, `on_page` (pages, files) while listing, `on_progress` per file.
    """
    root.mkdir(parents=True, exist_ok=True)
    listing = load_listing(source, root, competition, refresh=refresh_listing, report=report, on_page=on_page)
    sizes = {f.name: f.size for f in listing}
    csv_files = [RemoteFile(name, sizes.get(name)) for name in SPLIT_CSVS[split]]
    report(f"fetching {', '.join(SPLIT_CSVS[split])}")
    csvs = fetch_files(source, competition, root, csv_files, jobs=jobs)
    if csvs.failed:
        name, why = csvs.failed[0]
        raise DownloadError(f"could not fetch {name}: {why}")
    series_csv = root / SPLIT_CSVS[split][0]
    try:
        table, warnings, _ = read_series_table(series_csv)
    except DatasetError as exc:
        raise DownloadError(f"{exc.error_class}: {exc.message}") from None
    chosen = check_studies(studies) if studies is not None else sorted(table, key=int)
    if limit is not None:
        chosen = chosen[:limit]
    pairs, more = wanted_series(table, chosen, all_series, series_csv.name)
    warnings += more
    files, more = select_files(listing, pairs, split)
    warnings += more
    report(f"{len(chosen)} studies, {len(pairs)} series, {len(files)} files")
    fetched = fetch_files(source, competition, root, files, jobs=jobs, on_progress=on_progress)
    return StudiesResult(studies=chosen, series=pairs, files=fetched, csvs=csvs, warnings=warnings)


def _archive_marker(root: Path, competition: str) -> Path:
    return root / STATE_DIR / f"archive-{competition}.done"


def download_archive(source: "KaggleSource", root: Path, *, competition: str = COMPETITION,
                     keep_archive: bool = False, report: Callable[[str], None] = lambda s: None,
                     on_extract: Callable[[Progress], None] | None = None) -> ArchiveResult:
    """The whole competition: the client downloads (and resumes) the archive, then it is unpacked here."""
    root.mkdir(parents=True, exist_ok=True)
    marker = _archive_marker(root, competition)
    if marker.exists():
        return ArchiveResult(archive=None, already_complete=True)
    archive = source.fetch_archive(competition, root)
    report(f"unpacking {archive}")
    extracted, present = extract_archive(archive, root, on_progress=on_extract)
    write_atomic(marker, f"{competition}: {extracted + present} files unpacked from {archive.name}\n")
    if not keep_archive:
        archive.unlink()
    return ArchiveResult(archive=archive, extracted=extracted, present=present)


def extract_archive(archive: Path, root: Path,
                    on_progress: Callable[[Progress], None] | None = None) -> tuple[int, int]:
    """Unpack member by member (temporary name, then rename); members already complete are skipped."""
    extracted = present = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            progress = Progress(total=len(members))
            for number, member in enumerate(members, start=1):
                target = local_path(root, member.filename.rstrip("/"))
                if is_complete(target, member.file_size):
                    present += 1
                    progress.present += 1
                else:
                    # A fresh temporary name opened with O_EXCL: a link planted beside the target is
                    # never followed, and a half-written member never carries the final name.
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open_atomic(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    extracted += 1
                    progress.done += 1
                    progress.bytes += member.file_size
                if on_progress and (number % 200 == 0 or number == len(members)):
                    on_progress(progress)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DownloadError(f"{archive}: not a complete zip archive ({exc}); delete it and run again") from None
    return extracted, present


# -- the official client, behind the three calls this module needs -----------------------------------

class KaggleSource:
    """`kaggle.api.KaggleApi`, as kaggle 1.7 and 2.x offer it (both on kagglesdk).

    Calls used: `authenticate()`, `competition_list_files(competition, page_token, page_size)`
    (a response with `.files` [`.name`, `.total_bytes`] and `.next_page_token`),
    `competition_download_file(competition, file_name, path, force, quiet)` and
    `competition_download_files(competition, path, force, quiet)`.
    """

    def __init__(self, api: Any, notes: list[str] | None = None) -> None:
        self.api = api
        self.notes = notes or []     # the client's own warnings (e.g. a key file readable by others)

    @classmethod
    def connect(cls) -> "KaggleSource":
        """Import the client and find the credentials it finds; a missing one is a DownloadError (code 2)."""
        check_key_file()
        # The client prints its help and exits when it finds no credentials (at import in 1.7, in
        # authenticate() in 2.x): keep that off the terminal and say it in one line instead.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                from kaggle.api.kaggle_api_extended import KaggleApi

                api = KaggleApi()
                api.authenticate()
        except ImportError as exc:
            raise DownloadError(f"the Kaggle client is not installed ({exc}): {INSTALL_HINT}", code=2) from None
        except SystemExit:
            raise DownloadError(NO_CREDENTIALS, code=2) from None
        except OSError as exc:
            # kaggle 1.7 raises "Could not find kaggle.json ..." at import.
            if "kaggle.json" in str(exc):
                raise DownloadError(NO_CREDENTIALS, code=2) from None
            raise _translate(exc, "checking the Kaggle credentials") from None
        except Exception as exc:
            raise _translate(exc, "checking the Kaggle credentials") from None
        # The client authenticates at import too, so each of its warnings may come twice.
        lines = [line.strip() for line in captured.getvalue().splitlines()]
        notes = [line for line in lines if line.lower().startswith("warning")]
        return cls(api, list(dict.fromkeys(notes)))

    def list_pages(self, competition: str) -> Iterator[list[RemoteFile]]:
        token: str | None = None
        seen: set[str] = set()
        while True:
            try:
                response = self._call(f"listing {competition}", self.api.competition_list_files, competition,
                                      page_token=token, page_size=PAGE_SIZE)
            except DownloadError as exc:
                if exc.status == 404:
                    raise DownloadError(f"no Kaggle competition {competition!r} (HTTP 404)", code=2) from None
                raise
            batch = []
            for item in getattr(response, "files", None) or []:
                name = getattr(item, "name", None) or getattr(item, "ref", "")
                size = getattr(item, "total_bytes", None)
                batch.append(RemoteFile(name, size if isinstance(size, int) and size > 0 else None))
            yield batch
            token = getattr(response, "next_page_token", None) or None
            if token is None:
                return
            if token in seen:
                raise DownloadError(f"listing {competition}: Kaggle returned the same page token twice")
            seen.add(token)

    def fetch_file(self, competition: str, name: str, folder: Path) -> Path:
        """One file into an empty `folder`; returns the one file the client wrote there.

        Where the client puts it differs by version (2.2.4 and older: `folder/<base name>`;
        2.2.5: `folder/<dirs of name>/<base name>`), so take whatever single file appears.
        """
        folder.mkdir(parents=True, exist_ok=True)
        self._call(name, self.api.competition_download_file, competition, name, path=str(folder),
                   force=True, quiet=True)
        written = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".kaggle-partial")]
        if len(written) != 1:
            raise DownloadError(f"{name}: the Kaggle client wrote {len(written)} files, expected one")
        got = written[0]
        requested = PurePosixPath(name).name
        if got.name == requested + ".zip" and not requested.lower().endswith(".zip"):
            got = _unwrap_zip(got, name)    # large files are served inside a zip of the same name
        return got

    def fetch_archive(self, competition: str, folder: Path) -> Path:
        """The whole competition archive into `folder` (the client shows its progress and resumes)."""
        self._call(f"the {competition} archive", self.api.competition_download_files, competition,
                   path=str(folder), force=False, quiet=False)
        candidates = sorted(p for p in folder.glob(f"{competition}.*")
                            if p.is_file() and not p.name.endswith(".kaggle-partial"))
        if len(candidates) != 1:
            raise DownloadError(f"the {competition} archive: expected one {competition}.* file in {folder}, "
                                f"found {len(candidates)}")
        return candidates[0]

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        for attempt in range(RETRIES + 1):
            try:
                return function(*args, **kwargs)
            except DownloadError:
                raise
            except Exception as exc:
                if attempt < RETRIES and _transient(exc):
                    time.sleep(RETRY_BASE_SECONDS * 2 ** attempt)
                    continue
                raise _translate(exc, what, competition=args[0] if args else "") from None
        raise AssertionError("unreachable")


def kaggle_key_file() -> Path:
    """Where the kaggle client looks for kaggle.json (kaggle_api_extended: $KAGGLE_CONFIG_DIR, ~/.kaggle,
    else $XDG_CONFIG_HOME/kaggle on Linux)."""
    folder = os.environ.get("KAGGLE_CONFIG_DIR")
    if not folder:
        home = Path("~/.kaggle").expanduser()
        xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser()) / "kaggle"
        folder = str(home if home.exists() or not sys.platform.startswith("linux") else xdg)
    return Path(folder) / "kaggle.json"


def check_key_file() -> None:
    """A kaggle.json that exists but is not {"username": ..., "key": ...} is malformed, not missing.

    The client reads it as 'no credentials' (or fails with an AttributeError), which sends people
    looking for a file that is right there.
    """
    path = kaggle_key_file()
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DownloadError(f"{path}: cannot read the Kaggle key file: {exc.strerror}", code=2) from None
    try:
        data = json.loads(text)
        problem = "" if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"
        if not problem:
            wrong = [k for k in ("username", "key") if not isinstance(data.get(k), str) or not data.get(k)]
            problem = f"no {' or '.join(wrong)} string" if wrong else ""
    except (ValueError, RecursionError) as exc:   # JSONDecodeError, UnicodeDecodeError
        problem = f"not JSON ({one_line(exc, 80)})"
    if problem:
        raise DownloadError(f"{path} is malformed: {problem}; it should be {{\"username\": \"...\", \"key\": \"...\"}} "
                            "as downloaded from https://www.kaggle.com/settings/api", code=2)


def _unwrap_zip(path: Path, name: str) -> Path:
    target = path.with_name(path.name[: -len(".zip")])
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise DownloadError(f"{name}: served as a zip of {len(members)} files, expected one")
            with zf.open(members[0]) as src, open_atomic(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{name}: served as a broken zip ({exc})") from None
    path.unlink()
    return target


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _transient(exc: BaseException) -> bool:
    if _status(exc) in RETRY_STATUSES:
        return True
    return type(exc).__name__ in ("ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout",
                                  "ChunkedEncodingError")


def _translate(exc: BaseException, what: str, competition: str = "") -> DownloadError:
    """A client or HTTP exception as one line; refused credentials and access stop the run (code 2)."""
    status = _status(exc)
    if status == 401:
        return DownloadError("Kaggle refused the credentials (HTTP 401): check ~/.kaggle/kaggle.json, "
                             "KAGGLE_USERNAME/KAGGLE_KEY or KAGGLE_API_TOKEN", code=2, status=401)
    if status == 403:
        rules = f"https://www.kaggle.com/competitions/{competition}/rules" if competition else "the competition page"
        return DownloadError(f"{what}: Kaggle denied access (HTTP 403): accept the competition rules at {rules} "
                             f"with this account, then run again", code=2, status=403)
    if status == 404:
        return DownloadError(f"{what}: not found on Kaggle (HTTP 404)", status=404)
    if status is not None:
        return DownloadError(f"{what}: Kaggle answered HTTP {status}: {one_line(exc, 200)}",
                             status=status)
    if _transient(exc):
        return DownloadError(f"{what}: cannot reach Kaggle ({type(exc).__name__}); check the network and run again")
    return DownloadError(f"{what}: {type(exc).__name__}: {one_line(exc, 200)}")
