"""``churnwatch run --source redis`` as a subprocess, for end-to-end tests.

`running_monitor(redis_url, config_file, workdir)` starts the live monitor (wall clock) with its
metrics server on a free loopback port, waits until ``/metrics`` answers, and stops it with
SIGTERM (killed after ten seconds) when the block exits. The process's output goes to
``workdir/churnwatch-run.log``, quoted in every error.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = 60.0
_SERVING = re.compile(r"serves metrics on (http://\S+)/metrics")


@dataclass
class Monitor:
    """A running ``churnwatch run``: its base URL (``http://127.0.0.1:PORT``) and log."""

    url: str
    log_file: Path
    process: subprocess.Popen[bytes]

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    @property
    def address(self) -> str:
        """``host:port`` for a Prometheus target."""
        return self.url.split("//", 1)[1]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:
            return reply.read().decode()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_monitor(redis_url: str, config_file: Path, workdir: Path,
                    extra_args: Sequence[str] = ()) -> Iterator[Monitor]:
    """Run ``churnwatch run --source redis`` until the block exits."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "churnwatch-run.log"
    command = [sys.executable, "-m", "churnwatch.cli", "run", "--source", "redis",
               "--redis-url", redis_url, "--config", str(config_file),
               "--metrics-host", "127.0.0.1", "--metrics-port", "0", *extra_args]
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        url = None
        while url is None:
            if process.poll() is not None:
                raise RuntimeError(f"churnwatch run exited with {process.returncode}; log "
                                   f"{log_file}:\n{log_file.read_text(errors='replace')}")
            found = _SERVING.search(log_file.read_text(errors="replace"))
            if found:
                url = found.group(1)
            elif time.monotonic() > deadline:
                raise RuntimeError(f"churnwatch run did not serve metrics within "
                                   f"{STARTUP_TIMEOUT_SECONDS:g}s; log {log_file}:\n"
                                   f"{log_file.read_text(errors='replace')}")
            else:
                time.sleep(0.1)
        monitor = Monitor(url, log_file, process)
        while True:
            try:
                monitor.scrape()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{monitor.metrics_url} does not answer; log:\n"
                                       f"{monitor.log_tail()}") from None
                time.sleep(0.1)
        yield monitor
    finally:
        _stop(process)

