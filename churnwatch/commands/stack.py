"""``churnwatch stack``: the whole chain on one machine without Docker.

Starts, each on 127.0.0.1: a redis-server (persistence on, data under ``--workdir``),
``churnwatch run`` on the Redis streams, the shop simulator publishing to them, Prometheus with
the project's rule files scraping the monitor, and Alertmanager with the project's routing. The
same configuration as ``docker-compose.yml``, from Debian's packages. Ctrl-C or SIGTERM stops
everything, newest first, each service waited for before the next (``churnwatch run`` commits
its last batches before its Redis stops); exit status 130 after Ctrl-C, 0 after SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass
class Stack:
    """The processes of a running stack, and where they listen."""

    workdir: Path
    redis_port: int = 6390
    metrics_port: int = 9464
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self, customers: int, seconds_per_day: float, config: str | None) -> None:
        """Start every service in dependency order, waiting for each to be ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir(exist_ok=True)
        self._spawn("redis", [_binary("redis-server"), "--port", str(self.redis_port),
                              "--bind", "127.0.0.1", "--appendonly", "yes", "--dir",
                              str(redis_dir)], logs)
        _wait_tcp("127.0.0.1", self.redis_port, "redis-server")
        churnwatch = [sys.executable, "-m", "churnwatch.cli"]
        cfg = ["--config", config] if config else []
        self._spawn("churnwatch", churnwatch + ["run", "--source", "redis", "--redis-url",
                                                self.redis_url, "--metrics-port",
                                                str(self.metrics_port), *cfg], logs)
        _wait_http(f"http://127.0.0.1:{self.metrics_port}/metrics", "churnwatch run")
        self._spawn("simulator", churnwatch + ["simulate", "--publish", "--customers",
                                               str(customers), "--seconds-per-day",
                                               str(seconds_per_day), "--redis-url",
                                               self.redis_url, *cfg], logs)
        prometheus_yml = self.workdir / "prometheus.yml"
        prometheus_yml.write_text(prometheus_config(self.metrics_port, self.alertmanager_port))
        self._spawn("prometheus", [_binary("prometheus"), f"--config.file={prometheus_yml}",
                                   f"--storage.tsdb.path={self.workdir / 'prometheus'}",
                                   f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                                   "--storage.tsdb.retention.time=45d"], logs)
        am_dir = self.workdir / "alertmanager"
        am_dir.mkdir(exist_ok=True)
        self._spawn("alertmanager", [
            _binary("prometheus-alertmanager", "alertmanager"),
            f"--config.file={_package_file('churnwatch.metrics', 'alertmanager/alertmanager.yml')}",
            f"--storage.path={am_dir}",
            f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
            "--cluster.listen-address="], logs)
        _wait_http(f"http://127.0.0.1:{self.prometheus_port}/-/ready", "prometheus")
        _wait_http(f"http://127.0.0.1:{self.alertmanager_port}/-/ready", "alertmanager")

    def _spawn(self, name: str, argv: list[str], logs: Path) -> None:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def failed(self) -> list[str]:
        """Services that have exited."""
        return [n for n, p in self.processes.items() if p.poll() is not None]

    def stop(self) -> None:
        """Stop every service, newest first, each before the next (the monitor needs its Redis
        until it has committed); one that does not stop within 15 s is killed."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def prometheus_config(metrics_port: int, alertmanager_port: int) -> str:
    """Prometheus configuration for the native stack: the project's rules, 5 s scrapes."""
    rules = _package_file("churnwatch.metrics", "rules")
    return f"""# Written by `churnwatch stack`.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - {rules}/recording.yml
  - {rules}/alerts.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{alertmanager_port}"]
scrape_configs:
  - job_name: churnwatch
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
"""


def _package_file(package: str, name: str) -> Path:
    return Path(str(resources.files(package).joinpath(name)))


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"{names[0]} not found: install Debian's packages with `make "
                       "system-deps`")


def _wait_tcp(host: str, port: int, what: str, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def _wait_http(url: str, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


class _StopRequested(Exception):
    """Ctrl-C or SIGTERM reached the stack."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_requested(signum: int, frame: object) -> None:
    raise _StopRequested(signum)


def cmd_stack(args: argparse.Namespace) -> int:
    """Run the stack until Ctrl-C or SIGTERM (or ``--duration`` seconds)."""
    stack = Stack(Path(args.workdir), redis_port=args.redis_port,
                  metrics_port=args.metrics_port, prometheus_port=args.prometheus_port,
                  alertmanager_port=args.alertmanager_port)
    config = args.config or os.environ.get("CHURNWATCH_CONFIG") or str(
        _package_file("churnwatch", "data/demo.toml"))
    previous = {sig: signal.signal(sig, _stop_requested)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        stack.start(args.customers, args.seconds_per_day, config)
        print(f"""churnwatch stack is up (logs in {stack.workdir / 'logs'}):
  metrics and worklist  http://127.0.0.1:{stack.metrics_port}/metrics
                        http://127.0.0.1:{stack.metrics_port}/api/v1/customers?tier=at_risk
  prometheus            http://127.0.0.1:{stack.prometheus_port}  (alerts: /alerts)
  alertmanager          http://127.0.0.1:{stack.alertmanager_port}
  redis                 {stack.redis_url}
Grafana is not packaged for Debian: point one at the Prometheus above with
deploy/grafana/provisioning, or push the dashboards with `churnwatch dashboards push`.
Ctrl-C (or SIGTERM) stops everything.""", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            dead = stack.failed()
            if dead:
                print(f"churnwatch stack: {', '.join(dead)} exited; see the logs",
                      file=sys.stderr)
                code = 1
                break
            time.sleep(1)
    except RuntimeError as exc:  # a service missing or not ready: say which, stop the rest
        print(f"churnwatch stack: {exc}", file=sys.stderr, flush=True)
        code = 1
    except _StopRequested as stop:
        code = 130 if stop.signum == signal.SIGINT else 0
        print(f"churnwatch stack: stopping every service "
              f"({'Ctrl-C' if code == 130 else 'SIGTERM'})", file=sys.stderr, flush=True)
    finally:
        # A second signal must not cut the stop short and leave services behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if code != 1:
        print("churnwatch stack: stopped", file=sys.stderr, flush=True)
    return code


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``stack``."""
    p = sub.add_parser("stack", help="run redis, churnwatch, the simulator, Prometheus and "
                       "Alertmanager together on this machine (no Docker)")
    p.add_argument("--workdir", default="var/stack", help="data and logs (default var/stack)")
    p.add_argument("--customers", type=int, default=500)
    p.add_argument("--seconds-per-day", type=float, default=1.0,
                   help="simulated shop pace: wall seconds per simulated day")
    p.add_argument("--redis-port", type=int, default=6390)
    p.add_argument("--metrics-port", type=int, default=9464)
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--alertmanager-port", type=int, default=9093)
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    p.add_argument("--config", help="TOML configuration (default: the demo shop's)")
    p.set_defaults(func=cmd_stack)
