"""Faults on a real PostgreSQL: dead workers at the tail of the queue, an outage at the publish check, secrets.

The outage is real as far as the workers can tell: they reach PostgreSQL through a TCP proxy
that drops every connection and refuses new ones for a while, as a restart or failover does.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from batchseg.ledger import Ledger
from batchseg.synth import synth_dataset
from tests.conftest import batchseg, set_config
from tests.helpers import kill_workers_at_the_tail, wait_until

pytestmark = pytest.mark.pg


def pg_project(root: Path, url: str, studies: int, seed: int, **config: object) -> Path:
    data = root / "data"
    synth_dataset(data, studies, seed=seed, matrix=64, broken=False)
    project = root / "p"
    batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop", "--db", url)
    set_config(project, **config)
    return project


def test_sigkill_at_the_tail_of_the_queue_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    project = pg_project(tmp_path, pg_url, 6, seed=21, segmenter_options={"delay": 2.0}, lease_seconds=900,
                         heartbeat_seconds=1)
    kill_workers_at_the_tail(project, pg_url, 6)


class OutageProxy:
    """127.0.0.1:<port> -> PostgreSQL; `outage()` drops every connection and refuses new ones until `restore()`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def outage(self) -> None:
        self.down.set()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sockets.clear()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.outage()
        self.listener.close()


def test_a_database_outage_at_the_publish_check_is_waited_for(pg_url: str, tmp_path: Path) -> None:
    real = make_url(pg_url)
    proxy = OutageProxy(real.host or "127.0.0.1", real.port or 5432)
    proxied = real.set(port=proxy.port).render_as_string(hide_password=False)
    project = pg_project(tmp_path, proxied, 2, seed=22, segmenter_options={"delay": 3.0}, lease_seconds=120,
                         heartbeat_seconds=1, db_retry_seconds=120)
    watcher = Ledger(pg_url)          # the test's own view, not through the proxy
    worker = subprocess.Popen([sys.executable, "-m", "batchseg", "work", "--project", str(project)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(watcher.running, 60, what="the first study to start")
        time.sleep(1.5)
        proxy.outage()                # the worker finishes its study while the database is away
        time.sleep(6.0)
        proxy.restore()
        output, _ = worker.communicate(timeout=120)
    finally:
        proxy.close()
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output
    assert "trying again in" in output, "the outage was seen and waited for"
    summary = watcher.summary()
    assert summary["states"]["done"] == 2, output
    events = watcher.history()
    watcher.close()
    assert not [e for e in events if e["event"] in ("failed", "lost")], "no study was thrown away or charged"
    assert summary["attempts"] == 2


def test_a_password_in_the_url_is_never_printed_and_the_project_file_is_private(pg_url: str,
                                                                              tmp_path: Path) -> None:
    secret = "s3cret-pw"
    url = make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    data = tmp_path / "data"
    synth_dataset(data, 2, seed=23, matrix=64, broken=False)
    project = tmp_path / "p"
    init = batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop", "--db", url)
    assert secret not in init.stdout + init.stderr
    assert "***" in init.stdout and "~/.pgpass" in init.stderr
    assert stat.S_IMODE((project / "batchseg.toml").stat().st_mode) == 0o600
    status = batchseg("status", "--project", str(project))
    run = batchseg("run", "--project", str(project), "--db", url, "--workers", "1")
    logs = "".join(p.read_text() for p in (project / "logs").glob("*.log"))
    assert secret not in status.stdout + status.stderr + run.stdout + run.stderr + logs
    assert "does not travel to the workers" in run.stderr
