"""`batchseg download` with the real `kaggle` client against a local stand-in for Kaggle's servers.

Only Kaggle's servers are faked. The command runs in a child process, as a user runs it, and
the client reaches a server on 127.0.0.1 through two mechanisms it supports itself:
KAGGLE_API_ENVIRONMENT=LOCALHOST (kagglesdk's switch from https://api.kaggle.com to
http://localhost) and HTTP_PROXY, which requests (the client's HTTP library) honours through
Session.merge_environment_settings. The server answers the calls the client posts
(`/api/v1/competitions.CompetitionApiService/{ListDataFiles,DownloadDataFile,DownloadDataFiles}`)
the way Kaggle does: JSON pages with a nextPageToken, and 302 redirects to the bytes.
Nothing can reach the internet: the proxy is the only route, and it is this server.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import zipfile
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from click.testing import CliRunner

from batchseg.cli import cli
from batchseg.download import (DownloadError, RemoteFile, check_studies, extract_archive, local_path, select_files,
                               wanted_series)
from batchseg.dataset import Series

COMPETITION = "rsna-2024-lumbar-spine-degenerative-classification"
USER, KEY = "tester", "0123456789abcdef"
PAGE_CAP = 25       # the fake pages at 25 files (Kaggle: 200) so the listing takes several pages
CSVS = ("train_series_descriptions.csv", "train.csv", "train_label_coordinates.csv")
API = "/api/v1/competitions.CompetitionApiService/"
REST = "/api/v1/competitions/data/"


# -- the stand-in for Kaggle -----------------------------------------------------------------------

class FakeKaggle:
    """Kaggle's competition data API over the files of one folder, with a log of what was asked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.missing: set[str] = set()       # listed, but DownloadDataFile answers 404
        self.flaky: set[str] = set()         # DownloadDataFile answers 503 once
        self.forbidden = False               # rules not accepted: 403 everywhere
        self.lock = threading.Lock()
        self.archive = root.parent / f"{root.name}-archive" / f"{COMPETITION}.zip"
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def calls(self, name: str) -> list[dict[str, Any]]:
        return [body for call, body in self.log if call == name]

    def zip_path(self) -> Path:
        if not self.archive.exists():
            self.archive.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(self.archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for name in self.files():
                    zf.write(self.root / name, name)
        return self.archive


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKaggle

    def log_message(self, *args: Any) -> None:
        pass

    def _path(self) -> str:
        # Through a proxy the request line carries the absolute URL.
        return unquote(urlsplit(self.path).path)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, blob: str) -> None:
        self.send_response(302)
        self.send_header("Location", f"http://localhost/blobs/{quote(blob)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _authorized(self) -> bool:
        expected = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def do_POST(self) -> None:
        # kaggle 2.x (kagglesdk RPC): POST /api/v1/competitions.CompetitionApiService/<Call>, JSON body.
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self._api(self._path().removeprefix(API), body)

    def do_GET(self) -> None:
        path = self._path()
        if path.startswith("/blobs/"):
            return self._blob(path.removeprefix("/blobs/"))
        # kaggle 1.7 (the release for Python 3.10): GET /api/v1/competitions/data/{list,download,download-all}/...
        rest = path.removeprefix(REST)
        if rest == path:
            return self._json(404, {"code": 404, "message": "not found"})
        verb, _, rest = rest.partition("/")
        competition, _, file_name = rest.partition("/")
        keys = {"pagesize": "pageSize", "pagetoken": "pageToken"}    # 1.7 sends them in lower case
        query = {keys.get(k.lower(), k): v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        call = {"list": "ListDataFiles", "download": "DownloadDataFile", "download-all": "DownloadDataFiles"}.get(verb)
        body = {"competitionName": competition, **query, **({"fileName": file_name} if file_name else {})}
        self._api(call or verb, body)

    def _api(self, call: str, body: dict[str, Any]) -> None:
        fake = self.fake
        with fake.lock:
            fake.log.append((call, body))
        if not self._authorized():
            return self._json(401, {"code": 401, "message": "Unauthenticated"})
        if fake.forbidden:
            return self._json(403, {"code": 403, "message": "You must accept this competition's rules"})
        if body.get("competitionName") != COMPETITION:
            return self._json(404, {"code": 404, "message": "Competition not found"})
        if call == "ListDataFiles":
            names = fake.files()
            start = int(body.get("pageToken") or 0)
            end = start + min(int(body.get("pageSize") or 20), PAGE_CAP)
            page = {"files": [{"name": n, "totalBytes": (fake.root / n).stat().st_size} for n in names[start:end]]}
            if end < len(names):
                page["nextPageToken"] = str(end)
            return self._json(200, page)
        if call == "DownloadDataFile":
            name = body.get("fileName", "")
            with fake.lock:
                if name in fake.flaky:
                    fake.flaky.discard(name)
                    return self._json(503, {"code": 503, "message": "Service unavailable"})
            if name in fake.missing or name not in fake.files():
                return self._json(404, {"code": 404, "message": "File not found"})
            return self._redirect(name)
        if call == "DownloadDataFiles":
            fake.zip_path()
            return self._redirect(f"__archive__/{COMPETITION}.zip")
        return self._json(404, {"code": 404, "message": f"no such call {call}"})

    def _blob(self, blob: str) -> None:
        with self.fake.lock:
            self.fake.log.append(("blob", {"name": blob}))
        source = self.fake.archive if blob.startswith("__archive__/") else self.fake.root / blob
        data = source.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Last-Modified", formatdate(source.stat().st_mtime, usegmt=True))
        self.end_headers()
        self.wfile.write(data)


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def remote_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """What Kaggle holds: an RSNA-layout dataset (CSVs and train_images only) of four studies."""
    from batchseg.synth import synth_dataset

    work = tmp_path_factory.mktemp("kaggle")
    manifest = synth_dataset(work / "synth", 4, seed=3, matrix=64, broken=False)
    remote = work / "remote"
    remote.mkdir()
    for name in CSVS:
        shutil.copy2(manifest.root / name, remote / name)
    shutil.copytree(manifest.root / "train_images", remote / "train_images")
    return remote, manifest


@pytest.fixture
def kaggle(remote_data: tuple[Path, Any], tmp_path: Path) -> Iterator[FakeKaggle]:
    remote, _ = remote_data
    fake = FakeKaggle(remote)
    fake.archive = tmp_path / "served" / f"{COMPETITION}.zip"
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home folder holding a kaggle.json, as a user has after `Create New Token`."""
    folder = tmp_path / "home"
    (folder / ".kaggle").mkdir(parents=True)
    key_file = folder / ".kaggle" / "kaggle.json"
    key_file.write_text(json.dumps({"username": USER, "key": KEY}))
    key_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return folder


def run_download(kaggle: FakeKaggle, home: Path, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("KAGGLE_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy",
                                                                  "no_proxy")}
    proxy = f"http://127.0.0.1:{kaggle.port}"
    base.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
                 "HTTP_PROXY": proxy, "http_proxy": proxy, **(env or {})})
    return subprocess.run([sys.executable, "-m", "batchseg", "download", *args], capture_output=True, text=True,
                          env=base, timeout=300)


def local_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and ".batchseg_download" not in p.parts)


def series_files(remote: Path, study: str, series: int) -> list[str]:
    return sorted(p.relative_to(remote).as_posix() for p in (remote / "train_images" / study / str(series)).iterdir())


T2 = "Sagittal T2/STIR"


# -- the whole archive ------------------------------------------------------------------------------

def test_whole_archive_is_downloaded_unpacked_and_not_fetched_twice(kaggle: FakeKaggle, home: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "rsna"
    result = run_download(kaggle, home, "--to", str(out))
    assert result.returncode == 0, result.stderr
    assert local_files(out) == kaggle.files()
    for name in kaggle.files()[:5]:
        assert (out / name).read_bytes() == (kaggle.root / name).read_bytes()
    assert not (out / f"{COMPETITION}.zip").exists(), "the archive is deleted once unpacked"
    assert len(kaggle.calls("DownloadDataFiles")) == 1
    assert f"unpacked {len(kaggle.files())} files" in result.stdout

    again = run_download(kaggle, home, "--to", str(out))
    assert again.returncode == 0, again.stderr
    assert "already unpacked" in again.stdout
    assert len(kaggle.calls("DownloadDataFiles")) == 1, "a complete download is not fetched again"


def test_unpacking_skips_complete_files_and_redoes_partial_ones(kaggle: FakeKaggle, tmp_path: Path) -> None:
    archive = kaggle.zip_path()
    out = tmp_path / "out"
    names = kaggle.files()
    dicoms = [n for n in names if n.endswith(".dcm")]
    complete, partial = out / dicoms[0], out / dicoms[-1]
    for path in (complete, partial):
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(kaggle.root / dicoms[0], complete)
    os.utime(complete, (1_000_000, 1_000_000))
    partial.write_bytes((kaggle.root / dicoms[-1]).read_bytes()[:100])

    extracted, present = extract_archive(archive, out)
    assert (extracted, present) == (len(names) - 1, 1)
    assert complete.stat().st_mtime == 1_000_000, "a complete file is left alone"
    assert partial.read_bytes() == (kaggle.root / dicoms[-1]).read_bytes()
    assert local_files(out) == names
    assert not list(out.rglob("*.part"))


def test_a_broken_archive_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "x.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DownloadError, match="not a complete zip archive"):
        extract_archive(broken, tmp_path / "out")


# -- some studies -----------------------------------------------------------------------------------

def test_listed_studies_get_only_their_t2_series_and_init_takes_the_folder(kaggle: FakeKaggle, home: Path,
                                                                          remote_data: tuple[Path, Any],
                                                                          tmp_path: Path) -> None:
    _, manifest = remote_data
    chosen = manifest.studies[1:3]
    studies = tmp_path / "studies.txt"
    studies.write_text("".join(f"{s.study_id}\n" for s in chosen))
    out = tmp_path / "rsna"

    result = run_download(kaggle, home, "--to", str(out), "--studies", str(studies), "--jobs", "3")
    assert result.returncode == 0, result.stderr
    t2 = [name for s in chosen for name in series_files(kaggle.root, str(s.study_id), s.series[T2])]
    assert local_files(out) == sorted([*CSVS, *t2])
    for name in t2:
        assert (out / name).read_bytes() == (kaggle.root / name).read_bytes()
    fetched = sorted(call["fileName"] for call in kaggle.calls("DownloadDataFile"))
    assert fetched == sorted([*CSVS, *t2]), "only the CSVs and the T2 files are asked for"
    pages = kaggle.calls("ListDataFiles")
    assert len(pages) == -(-len(kaggle.files()) // PAGE_CAP) and int(pages[0]["pageSize"]) == 200
    assert f"{len(t2)} files downloaded, 0 already there, 0 failed" in result.stdout
    assert not (out / ".batchseg_download" / "staging").exists()

    project = tmp_path / "project"
    init = subprocess.run([sys.executable, "-m", "batchseg", "init", "--project", str(project), "--dataset", str(out),
                           "--studies", str(studies), "--segmenter", "noop"], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert f"{len(chosen)} with a Sagittal T2/STIR series, 0 skipped" in init.stdout


def test_limit_and_all_series_take_every_series_of_the_first_studies(kaggle: FakeKaggle, home: Path,
                                                                     remote_data: tuple[Path, Any],
                                                                     tmp_path: Path) -> None:
    _, manifest = remote_data
    out = tmp_path / "rsna"
    result = run_download(kaggle, home, "--to", str(out), "--limit", "1", "--all-series")
    assert result.returncode == 0, result.stderr
    first = manifest.studies[0]   # the CSV's studies in id order
    wanted = [n for series in first.series.values() for n in series_files(kaggle.root, str(first.study_id), series)]
    assert local_files(out) == sorted([*CSVS, *wanted])
    assert len(first.series) == 3


def test_a_rerun_skips_complete_files_and_refetches_partial_and_missing_ones(kaggle: FakeKaggle, home: Path,
                                                                             remote_data: tuple[Path, Any],
                                                                             tmp_path: Path) -> None:
    _, manifest = remote_data
    study = manifest.studies[0]
    studies = tmp_path / "studies.csv"
    studies.write_text(f"study_id\n{study.study_id}\n")
    out = tmp_path / "rsna"
    assert run_download(kaggle, home, "--to", str(out), "--studies", str(studies)).returncode == 0
    t2 = series_files(kaggle.root, str(study.study_id), study.series[T2])
    partial, missing = out / t2[0], out / t2[1]
    partial.write_bytes(partial.read_bytes()[:64])          # e.g. copied by hand, cut short
    missing.unlink()
    untouched = out / t2[2]
    os.utime(untouched, (1_000_000, 1_000_000))
    stray = out / ".batchseg_download" / "staging" / "7"    # what a killed run leaves behind
    stray.mkdir(parents=True)
    (stray / "3.dcm").write_bytes(b"half")
    kaggle.log.clear()

    result = run_download(kaggle, home, "--to", str(out), "--studies", str(studies))
    assert result.returncode == 0, result.stderr
    assert sorted(c["fileName"] for c in kaggle.calls("DownloadDataFile")) == sorted([t2[0], t2[1]])
    assert kaggle.calls("ListDataFiles") == [], "the listing of the first run is reused"
    assert f"2 files downloaded, {len(t2) - 2} already there" in result.stdout
    for name in t2:
        assert (out / name).read_bytes() == (kaggle.root / name).read_bytes()
    assert untouched.stat().st_mtime == 1_000_000
    assert not (out / ".batchseg_download" / "staging").exists()

    refreshed = run_download(kaggle, home, "--to", str(out), "--studies", str(studies), "--refresh-listing")
    assert refreshed.returncode == 0 and len(kaggle.calls("ListDataFiles")) > 1


def test_a_failed_file_is_reported_the_others_arrive_and_a_rerun_completes(kaggle: FakeKaggle, home: Path,
                                                                          remote_data: tuple[Path, Any],
                                                                          tmp_path: Path) -> None:
    _, manifest = remote_data
    study = manifest.studies[2]
    studies = tmp_path / "studies.txt"
    studies.write_text(f"{study.study_id}\n")
    t2 = series_files(kaggle.root, str(study.study_id), study.series[T2])
    kaggle.missing.add(t2[3])
    kaggle.flaky.add(t2[4])           # one 503, then fine: retried, not failed
    out = tmp_path / "rsna"

    result = run_download(kaggle, home, "--to", str(out), "--studies", str(studies))
    assert result.returncode == 1
    assert f"failed {t2[3]}: not found on Kaggle (HTTP 404)" in result.stderr
    assert local_files(out) == sorted([*CSVS, *(n for n in t2 if n != t2[3])])

    kaggle.missing.clear()
    again = run_download(kaggle, home, "--to", str(out), "--studies", str(studies))
    assert again.returncode == 0, again.stderr
    assert f"1 files downloaded, {len(t2) - 1} already there, 0 failed" in again.stdout


# -- refusals -----------------------------------------------------------------------------------------

def test_a_bad_study_id_is_refused_before_any_request(kaggle: FakeKaggle, home: Path, tmp_path: Path) -> None:
    studies = tmp_path / "studies.txt"
    studies.write_text("4003253\n../../etc\n")
    out = tmp_path / "rsna"
    result = run_download(kaggle, home, "--to", str(out), "--studies", str(studies))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["batchseg: study list: not a plain decimal study id: '../../etc'"]
    assert kaggle.log == [] and not out.exists()


def test_missing_credentials_are_one_line(kaggle: FakeKaggle, tmp_path: Path) -> None:
    empty_home = tmp_path / "nobody"
    empty_home.mkdir()
    result = run_download(kaggle, empty_home, "--to", str(tmp_path / "rsna"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchseg: no Kaggle credentials found"), result.stderr
    assert result.stdout == "" and kaggle.log == []


@pytest.mark.parametrize("problem, expected", [
    ("wrong key", "batchseg: Kaggle refused the credentials (HTTP 401)"),
    ("rules not accepted", "Kaggle denied access (HTTP 403): accept the competition rules at "
                           f"https://www.kaggle.com/competitions/{COMPETITION}/rules"),
])
def test_refused_credentials_and_access_are_one_line(kaggle: FakeKaggle, home: Path, tmp_path: Path,
                                                     problem: str, expected: str) -> None:
    env = {}
    if problem == "wrong key":
        env = {"KAGGLE_USERNAME": USER, "KAGGLE_KEY": "not-the-key"}   # the environment wins over kaggle.json
    else:
        kaggle.forbidden = True
    result = run_download(kaggle, home, "--to", str(tmp_path / "rsna"), "--limit", "1", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_an_unknown_competition_is_refused(kaggle: FakeKaggle, home: Path, tmp_path: Path) -> None:
    result = run_download(kaggle, home, "--to", str(tmp_path / "rsna"), "--competition", "no-such-thing",
                          "--limit", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == "batchseg: no Kaggle competition 'no-such-thing' (HTTP 404)"
    bad = run_download(kaggle, home, "--to", str(tmp_path / "rsna"), "--competition", "../x")
    assert bad.returncode == 2 and "not a Kaggle competition name" in bad.stderr


def test_without_the_client_the_hint_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A None entry in sys.modules is how Python itself spells "this module cannot be imported".
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kaggle", None)
    result = CliRunner().invoke(cli, ["download", "--to", str(tmp_path / "rsna")])
    assert result.exit_code == 2
    assert "pip install 'batchseg[kaggle]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- the pure parts -----------------------------------------------------------------------------------

def test_check_studies_keeps_order_drops_repeats_and_refuses_non_numbers() -> None:
    assert check_studies([" 12", "3", "12"]) == ["12", "3"]
    for bad in ("1e5", "-3", "12/..", "", "0x10", "١٢"):
        with pytest.raises(DownloadError) as caught:
            check_studies(["5", bad])
        assert caught.value.code == 2


def test_local_path_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    assert local_path(tmp_path, "train_images/1/2/3.dcm") == tmp_path / "train_images" / "1" / "2" / "3.dcm"
    for bad in ("../x.csv", "a/../../x", "/etc/passwd", "a//b", "a\\..\\b", "a/\x00b"):
        with pytest.raises(DownloadError):
            local_path(tmp_path, bad)


def test_file_selection_takes_the_t2_series_and_ignores_odd_listing_names() -> None:
    table = {"1": [Series("10", "Sagittal T1"), Series("11", T2)], "2": [Series("20", "Axial T2")],
             "3": [Series("30", T2), Series("31", T2)]}
    pairs, warnings = wanted_series(table, ["1", "2", "4", "3"], False, "train_series_descriptions.csv")
    assert pairs == [("1", "11"), ("3", "30"), ("3", "31")]
    assert warnings == ["study 2: no Sagittal T2/STIR series (found: Axial T2); nothing to fetch",
                        "study 4: not in train_series_descriptions.csv; nothing to fetch"]
    assert wanted_series(table, ["1"], True, "x.csv")[0] == [("1", "10"), ("1", "11")]
    listing = [RemoteFile("train.csv", 5), RemoteFile("train_images/1/11/1.dcm", 9),
               RemoteFile("train_images/1/10/1.dcm", 9), RemoteFile("train_images/1/11/../../x.dcm", 9),
               RemoteFile("train_images/1/11/notes.txt", 3), RemoteFile("test_images/3/30/1.dcm", 9),
               RemoteFile("train_images/3/30/2.dcm", None)]
    files, warnings = select_files(listing, pairs, "train")
    assert [f.name for f in files] == ["train_images/1/11/1.dcm", "train_images/3/30/2.dcm"]
    assert warnings == ["study 3 series 31: no files in the competition listing"]


def test_a_file_served_inside_a_zip_of_its_name_is_unwrapped(tmp_path: Path) -> None:
    # Kaggle serves large single files compressed: a request for x.csv can arrive as x.csv.zip.
    from batchseg.download import _unwrap_zip

    wrapped = tmp_path / "train.csv.zip"
    with zipfile.ZipFile(wrapped, "w") as zf:
        zf.writestr("train.csv", "study_id\n1\n")
    got = _unwrap_zip(wrapped, "train.csv")
    assert got == tmp_path / "train.csv" and got.read_text() == "study_id\n1\n" and not wrapped.exists()
    two = tmp_path / "two.csv.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a", "1")
        zf.writestr("b", "2")
    with pytest.raises(DownloadError, match="zip of 2 files"):
        _unwrap_zip(two, "two.csv")


# -- hostile leftovers and broken local files (issue 13) ---------------------------------------------

def test_unpacking_never_writes_through_a_planted_symlink(kaggle: FakeKaggle, tmp_path: Path) -> None:
    archive = kaggle.zip_path()
    out = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    name = next(n for n in kaggle.files() if n.endswith(".dcm"))
    target = out / name
    target.parent.mkdir(parents=True)
    # at the target itself and at the temporary name the unpacker used to use
    target.with_name(f".{target.name}.part").symlink_to(victim)
    other = out / next(n for n in kaggle.files() if n.endswith(".csv"))
    other.symlink_to(victim)
    extract_archive(archive, out)
    assert victim.read_text() == "keep me"
    assert target.read_bytes() == (kaggle.root / name).read_bytes()
    assert not other.is_symlink() and other.read_bytes() == (kaggle.root / other.relative_to(out)).read_bytes()


def test_a_corrupted_listing_cache_is_one_line(kaggle: FakeKaggle, home: Path, remote_data: tuple[Path, Any],
                                               tmp_path: Path) -> None:
    out = tmp_path / "rsna"
    cache = out / ".batchseg_download" / f"listing-{COMPETITION}.tsv"
    cache.parent.mkdir(parents=True)
    for garbage in (b"train.csv\tnot-a-size\n", b"\xff\xfe\x00garbage", b"no tab here\n"):
        cache.write_bytes(garbage)
        result = run_download(kaggle, home, "--to", str(out), "--limit", "1")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cached file listing" in lines[0] and "--refresh-listing" in lines[0], lines
    assert run_download(kaggle, home, "--to", str(out), "--limit", "1", "--refresh-listing").returncode == 0


@pytest.mark.parametrize("content", ['{"username": "tester", "key": ', '["tester", "key"]', '{"username": "tester"}'])
def test_a_malformed_kaggle_json_is_called_malformed(kaggle: FakeKaggle, home: Path, tmp_path: Path,
                                                     content: str) -> None:
    key_file = home / ".kaggle" / "kaggle.json"
    key_file.write_text(content)
    result = run_download(kaggle, home, "--to", str(tmp_path / "rsna"), "--limit", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key_file} is malformed" in lines[0], result.stderr
    assert kaggle.log == []
