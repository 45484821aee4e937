"""Real Prometheus and Alertmanager servers, and a webhook receiver, for integration tests.

Every server listens on 127.0.0.1 on a free port, keeps its files in a temporary (or given)
directory and is stopped when its context manager exits, killed if it does not stop within
ten seconds. A missing binary is an error that says how to install it, never a skip.

Context managers, usable from any test or script:

- `running_prometheus(targets, rule_files=..., alertmanager_urls=...)` -> `PrometheusServer`
  (1 s scrape and rule-evaluation interval by default).
- `running_alertmanager(config_file)` -> `AlertmanagerServer` (clustering disabled).
- `running_webhook_receiver()` -> `WebhookReceiver`, collecting the JSON Alertmanager posts.

Helpers: `query(url, expr)` runs an instant PromQL query, `wait_until(...)` polls, and
`write_test_alertmanager_config(...)` turns churnwatch's Alertmanager configuration into one
whose receivers all post to a `WebhookReceiver`, with short group timers.

pytest fixtures: `webhook_receiver`, `alertmanager` (churnwatch's configuration routed to
`webhook_receiver`), `prometheus_factory` and `alertmanager_factory`. The functions are named
`<fixture>_fixture`, so that importing them into a test module
(`from servers import alertmanager_fixture  # noqa: F401`) does not clash with the test's
argument names; or list this module once in a conftest.py: `pytest_plugins = ["servers"]`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = REPO_ROOT / "metrics" / "rules"
RULE_FILES = (RULES_DIR / "recording.yml", RULES_DIR / "alerts.yml")
ALERTMANAGER_CONFIG = REPO_ROOT / "metrics" / "alertmanager" / "alertmanager.yml"

PROMETHEUS_BINARIES = ("prometheus",)
# Debian's prometheus-alertmanager package installs the server under its package name.
ALERTMANAGER_BINARIES = ("alertmanager", "prometheus-alertmanager")

STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
_BIND_ATTEMPTS = 3

T = TypeVar("T")


class ServerError(RuntimeError):
    """A server could not be found, started or reached."""


class PromQLError(RuntimeError):
    """Prometheus rejected a query; the message carries its error and the expression."""


def find_binary(*names: str) -> str:
    """Return the path of the first of `names` found on PATH.

    Raises `ServerError` naming the Debian packages to install (`make system-deps`).
    """
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ServerError(
        f"none of {', '.join(names)} found on PATH={os.environ.get('PATH', '')!r}: "
        "run `make system-deps` (Debian packages prometheus, prometheus-alertmanager)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Call `condition` until it returns something truthy and return that.

    Raises AssertionError after `timeout` seconds, naming `what` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last: {value!r}"
            )
        time.sleep(interval)


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    """Send `body` as JSON (if given) and return the decoded JSON answer (None if empty)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def query(base_url: str, expr: str, at: float | None = None, timeout: float = 10.0) -> Any:
    """Run the instant PromQL query `expr` on the Prometheus at `base_url`.

    Returns `data.result` of the answer: a list of `{"metric": {...}, "value": [ts, "v"]}`
    for a vector, `[ts, "v"]` for a scalar. `at` is a Unix time (default: now). Raises
    `PromQLError` with Prometheus' message when the expression is rejected.
    """
    params = {"query": expr}
    if at is not None:
        params["time"] = repr(float(at))
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        answer = http_json("GET", url, timeout=timeout)
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read())
            message = f"{detail.get('errorType')}: {detail.get('error')}"
        except ValueError:
            message = str(error)
        raise PromQLError(f"{expr!r} rejected by {base_url}: {message}") from None
    if answer.get("status") != "success":
        raise PromQLError(f"{expr!r} failed on {base_url}: {answer!r}")
    return answer["data"]["result"]


def _log_tail(log_file: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(
    name: str, url: str, process: subprocess.Popen[bytes], log_file: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerError(
                f"{name} exited with code {process.returncode} before {url}/-/ready answered; "
                f"log {log_file}:\n{_log_tail(log_file)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise ServerError(
                f"{name} not ready at {url}/-/ready after {timeout:g}s; "
                f"log {log_file}:\n{_log_tail(log_file)}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def _running_process(
    name: str,
    command: Callable[[int], list[str]],
    workdir: Path,
    timeout: float,
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """Start `command(port)` on a free port, wait for /-/ready, stop it on exit.

    A port taken between `free_port()` and the server's bind is retried on another port.
    """
    log_file = workdir / f"{name}.log"
    for attempt in range(1, _BIND_ATTEMPTS + 1):
        port = free_port()
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                command(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir
            )
        try:
            _wait_ready(name, f"http://127.0.0.1:{port}", process, log_file, timeout)
        except ServerError:
            _stop(process)
            if attempt < _BIND_ATTEMPTS and "address already in use" in _log_tail(log_file):
                continue
            raise
        break
    try:
        yield process, port, log_file
    finally:
        _stop(process)


@contextlib.contextmanager
def _workdir(workdir: Path | None, prefix: str) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# ------------------------------------------------------------------------------ Prometheus


@dataclass
class PrometheusServer:
    """A running Prometheus: its base URL (`http://127.0.0.1:PORT`) and files."""

    url: str
    port: int
    config_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def query(self, expr: str, at: float | None = None) -> Any:
        """Instant query; see the module-level `query`."""
        return query(self.url, expr, at)

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now (`/api/v1/alerts`)."""
        return list(http_json("GET", f"{self.url}/api/v1/alerts")["data"]["alerts"])

    def rule_groups(self) -> list[dict[str, Any]]:
        """Loaded rule groups with each rule's health and last error (`/api/v1/rules`)."""
        return list(http_json("GET", f"{self.url}/api/v1/rules")["data"]["groups"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health (`/api/v1/targets`)."""
        return list(http_json("GET", f"{self.url}/api/v1/targets")["data"]["activeTargets"])

    def reload(self) -> None:
        """Re-read the configuration and rule files; needs `lifecycle=True`."""
        http_json("POST", f"{self.url}/-/reload")

    def wait_for_alert(
        self, alertname: str, *, state: str = "firing", timeout: float = 120.0, **labels: str
    ) -> dict[str, Any]:
        """Wait until an alert named `alertname` with `labels` is in `state`; return it."""

        def matching() -> dict[str, Any] | None:
            for alert in self.alerts():
                alert_labels = alert["labels"]
                if (
                    alert_labels.get("alertname") == alertname
                    and alert["state"] == state
                    and all(alert_labels.get(k) == v for k, v in labels.items())
                ):
                    return alert
            return None

        return wait_until(
            matching, timeout=timeout, interval=0.5, what=f"{alertname}{labels} {state}"
        )


def _host_port(address: str) -> str:
    """`http://127.0.0.1:9093` or `127.0.0.1:9093` -> `127.0.0.1:9093`."""
    parsed = urllib.parse.urlsplit(address if "//" in address else f"//{address}")
    return parsed.netloc


def prometheus_config(
    targets: Iterable[str],
    *,
    job: str,
    rule_files: Iterable[os.PathLike[str] | str],
    alertmanager_urls: Iterable[str],
    interval: str,
    self_address: str | None,
    extra_scrape_configs: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """The prometheus.yml that `running_prometheus` writes, as a dict."""
    scrape_configs: list[dict[str, Any]] = []
    target_list = [_host_port(t) for t in targets]
    if target_list:
        scrape_configs.append({"job_name": job, "static_configs": [{"targets": target_list}]})
    if self_address is not None:
        scrape_configs.append(
            {"job_name": "prometheus", "static_configs": [{"targets": [self_address]}]}
        )
    scrape_configs.extend(dict(c) for c in extra_scrape_configs)
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            # A timeout longer than the interval is a configuration error.
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": scrape_configs,
    }
    managers = [_host_port(u) for u in alertmanager_urls]
    if managers:
        config["alerting"] = {
            "alertmanagers": [{"api_version": "v2", "static_configs": [{"targets": managers}]}]
        }
    return config


@contextlib.contextmanager
def running_prometheus(
    targets: Iterable[str] = (),
    *,
    job: str = "churnwatch",
    rule_files: Iterable[os.PathLike[str] | str] = (),
    alertmanager_urls: Iterable[str] = (),
    scrape_self: bool = False,
    interval: str = "1s",
    alert_resend_delay: str = "1s",
    lifecycle: bool = False,
    extra_scrape_configs: Iterable[Mapping[str, Any]] = (),
    extra_args: Iterable[str] = (),
    workdir: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
) -> Iterator[PrometheusServer]:
    """Run a real Prometheus until the block exits.

    `targets` (`host:port` or URLs, scraped at `/metrics`) form the scrape job `job`;
    `scrape_self` adds a job `prometheus` scraping this server. Rules are evaluated and
    targets scraped every `interval`; alerts go to `alertmanager_urls`. `lifecycle` enables
    `POST /-/reload`. Files (config, TSDB, log) go to `workdir` or a temporary directory.

    `alert_resend_delay` (Prometheus' default: 1m) is short because Prometheus learns its
    Alertmanagers through service discovery a few seconds after start: an alert that fires
    before that is dropped and, with the default, only sent again a minute later.
    """
    binary = find_binary(*PROMETHEUS_BINARIES)
    targets, rule_files = list(targets), list(rule_files)
    alertmanager_urls, extra_scrape_configs = list(alertmanager_urls), list(extra_scrape_configs)
    with _workdir(workdir, "prometheus-") as directory:
        config_file = directory / "prometheus.yml"

        def command(port: int) -> list[str]:
            config = prometheus_config(
                targets,
                job=job,
                rule_files=rule_files,
                alertmanager_urls=alertmanager_urls,
                interval=interval,
                self_address=f"127.0.0.1:{port}" if scrape_self else None,
                extra_scrape_configs=extra_scrape_configs,
            )
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            return [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--rules.alert.resend-delay={alert_resend_delay}",
                *(["--web.enable-lifecycle"] if lifecycle else []),
                *extra_args,
            ]

        with _running_process("prometheus", command, directory, startup_timeout) as (
            process,
            port,
            log_file,
        ):
            yield PrometheusServer(
                url=f"http://127.0.0.1:{port}",
                port=port,
                config_file=config_file,
                log_file=log_file,
                process=process,
            )


# ---------------------------------------------------------------------------- Alertmanager


@dataclass
class AlertmanagerServer:
    """A running Alertmanager: its base URL (`http://127.0.0.1:PORT`) and files."""

    url: str
    port: int
    config_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def post_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Post alerts as Prometheus does: dicts with `labels`, `annotations`, ..."""
        http_json("POST", f"{self.url}/api/v2/alerts", [dict(a) for a in alerts])

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds, each with `status.state` (active, suppressed) and
        `status.inhibitedBy`."""
        return list(http_json("GET", f"{self.url}/api/v2/alerts"))


@contextlib.contextmanager
def running_alertmanager(
    config_file: os.PathLike[str] | str,
    *,
    extra_args: Iterable[str] = (),
    workdir: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
) -> Iterator[AlertmanagerServer]:
    """Run a real Alertmanager with `config_file` until the block exits.

    Clustering is disabled (`--cluster.listen-address=`); state goes to `workdir` or a
    temporary directory.
    """
    binary = find_binary(*ALERTMANAGER_BINARIES)
    config_path = Path(config_file).resolve()
    extra = list(extra_args)
    with _workdir(workdir, "alertmanager-") as directory:

        def command(port: int) -> list[str]:
            return [
                binary,
                f"--config.file={config_path}",
                f"--storage.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                *extra,
            ]

        with _running_process("alertmanager", command, directory, startup_timeout) as (
            process,
            port,
            log_file,
        ):
            yield AlertmanagerServer(
                url=f"http://127.0.0.1:{port}",
                port=port,
                config_file=config_path,
                log_file=log_file,
                process=process,
            )


def write_test_alertmanager_config(
    source: os.PathLike[str] | str,
    destination: os.PathLike[str] | str,
    webhook_url: str,
    *,
    group_wait: str = "1s",
    group_interval: str = "1s",
) -> Path:
    """Copy an Alertmanager configuration with every receiver posting to `webhook_url`.

    Routing, grouping and inhibition stay as they are, so the `receiver` field of each
    payload tells where production would have sent it. Slack settings are dropped and the
    group timers of every route shortened to `group_wait` and `group_interval`.
    """
    config = yaml.safe_load(Path(source).read_text())
    config.get("global", {}).pop("slack_api_url_file", None)
    for receiver in config.get("receivers", []):
        for key in [k for k in receiver if k.endswith("_configs")]:
            del receiver[key]
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]

    def shorten(route: dict[str, Any]) -> None:
        route["group_wait"] = group_wait
        route["group_interval"] = group_interval
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    path = Path(destination)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ------------------------------------------------------------------------ webhook receiver


class WebhookReceiver:
    """Collects the JSON bodies posted to it; `url` ends in `/alerts`."""

    def __init__(self, host: str, port: int) -> None:
        self.url = f"http://{host}:{port}/alerts"
        self._payloads: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    @property
    def payloads(self) -> list[dict[str, Any]]:
        """Every payload received so far, oldest first (a copy)."""
        with self._changed:
            return list(self._payloads)

    def record(self, payload: dict[str, Any]) -> None:
        """Called by the HTTP handler for each posted payload."""
        with self._changed:
            self._payloads.append(payload)
            self._changed.notify_all()

    def alerts(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """`(payload, alert)` for every alert of every payload received so far."""
        return [(p, a) for p in self.payloads for a in p.get("alerts", [])]

    def wait_for_alert(
        self, alertname: str, *, status: str = "firing", timeout: float = 60.0, **labels: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait for an alert named `alertname` with `labels` and `status`.

        Returns `(payload, alert)`; `payload["receiver"]` names the receiver it was routed to.
        """
        deadline = time.monotonic() + timeout

        def find() -> tuple[dict[str, Any], dict[str, Any]] | None:
            for payload, alert in self.alerts():
                alert_labels = alert.get("labels", {})
                if (
                    alert_labels.get("alertname") == alertname
                    and alert.get("status") == status
                    and all(alert_labels.get(k) == v for k, v in labels.items())
                ):
                    return payload, alert
            return None

        with self._changed:
            while True:
                found = find()
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {status} {alertname}{labels} posted to {self.url} within "
                        f"{timeout:g}s; received: {self._payloads!r}"
                    )
                self._changed.wait(remaining)


@contextlib.contextmanager
def running_webhook_receiver() -> Iterator[WebhookReceiver]:
    """An HTTP server on a free loopback port, in a thread, recording posted JSON."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    host, port = server.server_address[:2]
    receiver = WebhookReceiver(str(host), int(port))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                payload = json.loads(body)
            except ValueError:
                self.send_error(400, "body is not JSON")
                return
            receiver.record(payload)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean; payloads are kept on the receiver

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT_SECONDS)


# ---------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(name="webhook_receiver")
def webhook_receiver_fixture() -> Iterator[WebhookReceiver]:
    """A `WebhookReceiver` for the test, stopped after it."""
    with running_webhook_receiver() as receiver:
        yield receiver


@pytest.fixture(name="alertmanager_factory")
def alertmanager_factory_fixture(tmp_path: Path) -> Iterator[Callable[..., AlertmanagerServer]]:
    """Start Alertmanagers with `running_alertmanager`'s arguments; all stopped after."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(config_file: os.PathLike[str] | str, **kwargs: Any) -> AlertmanagerServer:
            nonlocal count
            count += 1
            kwargs.setdefault("workdir", tmp_path / f"alertmanager-{count}")
            return stack.enter_context(running_alertmanager(config_file, **kwargs))

        yield start


@pytest.fixture(name="alertmanager")
def alertmanager_fixture(
    tmp_path: Path,
    webhook_receiver: WebhookReceiver,
    alertmanager_factory: Callable[..., AlertmanagerServer],
) -> AlertmanagerServer:
    """churnwatch's Alertmanager configuration, every receiver posting to `webhook_receiver`."""
    config = write_test_alertmanager_config(
        ALERTMANAGER_CONFIG, tmp_path / "alertmanager-test.yml", webhook_receiver.url
    )
    return alertmanager_factory(config)


@pytest.fixture(name="prometheus_factory")
def prometheus_factory_fixture(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start Prometheus servers with `running_prometheus`'s arguments; all stopped after.

    For churnwatch's rules pass `rule_files=RULE_FILES`.
    """
    with contextlib.ExitStack() as stack:
        count = 0

        def start(targets: Iterable[str] = (), **kwargs: Any) -> PrometheusServer:
            nonlocal count
            count += 1
            kwargs.setdefault("workdir", tmp_path / f"prometheus-{count}")
            return stack.enter_context(running_prometheus(targets, **kwargs))

        yield start
