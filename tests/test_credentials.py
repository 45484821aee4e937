"""Redis credentials: never printed (logs, errors, ``/healthz``), a refused login stops at once
with a one-line message and exit status 2 (only lost connections are retried), and an
unreachable Redis is a one-line error for the one-shot commands. Against a real redis-server
started with ``--requirepass``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from churnwatch.dataflows.redis_source import RedisStreamSource
from churnwatch.state.connection import is_lost_connection, redact_url
from churnwatch.state.redis_store import RedisStore
from hypothesis import given
from hypothesis import strategies as st
from live_servers import CHURNWATCH, kill_hard, tail, wait_for
from servers import free_port

PASSWORD = "Tr0ub4dor-and-3"
WRONG = "not-the-Passw0rd"
NOISE = ("Traceback", "panicked")


@dataclass
class SecuredRedis:
    port: int

    def url(self, password: str | None = PASSWORD, user: str = "") -> str:
        auth = f"{user}:{password}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredRedis]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="churnwatch-auth-redis-")
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password=PASSWORD)
        wait_for(lambda: _pings(client), 10, "redis-server with --requirepass")
        client.close()
        yield SecuredRedis(port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def churnwatch(*argv: str, env: dict[str, str], timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_")}
    return subprocess.run([CHURNWATCH, *argv], capture_output=True, text=True,
                          env={**clean, **env}, timeout=timeout)


def assert_one_clean_line(result: subprocess.CompletedProcess[str], *secrets: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in (*NOISE, *secrets):
        assert word not in result.stderr + result.stdout
    return lines[0]


def test_a_wrong_password_stops_run_at_once_with_exit_2_and_no_password_shown(
        secured: SecuredRedis) -> None:
    started = time.monotonic()
    result = churnwatch("run", "--metrics-port", "0",
                        env={"CHURNWATCH_REDIS_URL": secured.url(WRONG, user="app")})
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 30  # no retrying for ever
    line = assert_one_clean_line(result, WRONG)
    assert line.startswith("churnwatch: error: Redis at redis://app:***@127.0.0.1:")
    assert "refused the login" in line


def test_no_password_for_a_server_that_wants_one_is_a_refused_login(
        secured: SecuredRedis, tmp_path: Path) -> None:
    url_file = tmp_path / "redis-url"
    url_file.write_text(secured.url(password=None) + "\n")
    result = churnwatch("run", "--no-metrics", env={"CHURNWATCH_REDIS_URL_FILE": str(url_file)})
    assert result.returncode == 2
    assert "refused the login" in assert_one_clean_line(result)


@pytest.mark.parametrize("command", [
    ("publish", "-"), ("top",), ("explain", "c1"), ("export",), ("status",)])
def test_one_shot_commands_answer_a_wrong_password_in_one_line(
        command: tuple[str, ...], secured: SecuredRedis) -> None:
    result = churnwatch(*command, env={"CHURNWATCH_REDIS_URL": secured.url(WRONG)})
    assert result.returncode == 2
    line = assert_one_clean_line(result, WRONG)
    assert "Redis at redis://:***@127.0.0.1:" in line and "refused the login" in line


@pytest.mark.parametrize("command", [("top",), ("explain", "c1"), ("export",), ("status",),
                                     ("publish", "-")])
def test_one_shot_commands_answer_an_unreachable_redis_in_one_line(
        command: tuple[str, ...]) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    result = churnwatch(*command, env={"CHURNWATCH_REDIS_URL": url})
    assert result.returncode == 2
    line = assert_one_clean_line(result, PASSWORD)
    assert "is unreachable" in line and "redis://:***@127.0.0.1:" in line


def test_run_shows_the_url_redacted_and_healthz_never_shows_it(
        secured: SecuredRedis, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [CHURNWATCH, "-v", "run", "--metrics-port", "0"], stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean, "CHURNWATCH_REDIS_URL": secured.url(user="default"),
                 "PYTHONUNBUFFERED": "1"})
    try:
        found = wait_for(lambda: re.search(r"serves metrics on (http://\S+)/metrics",
                                           log.read_text()), 60, "the metrics server")
        with urllib.request.urlopen(f"{found.group(1)}/healthz", timeout=10) as reply:
            body = reply.read().decode()
        assert json.loads(body) == {"status": "ok", "redis": "ok"}
        assert PASSWORD not in body
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, tail(log)
    finally:
        kill_hard(process)
    text = log.read_text()
    assert "state in redis://default:***@127.0.0.1:" in text
    assert PASSWORD not in text


def test_a_password_changed_under_a_running_monitor_stops_it_with_exit_2(
        secured: SecuredRedis, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [CHURNWATCH, "run", "--no-metrics"], stdout=out, stderr=subprocess.STDOUT,
            env={**clean, "CHURNWATCH_REDIS_URL": secured.url(), "PYTHONUNBUFFERED": "1"})
    admin = redis.Redis(port=secured.port, password=PASSWORD)
    try:
        wait_for(lambda: "state in" in log.read_text(), 60, "the run to start")
        time.sleep(1.0)
        admin.config_set("requirepass", WRONG)
        admin.client_kill_filter(_type="normal", skipme=True)
        code = process.wait(timeout=60)
    finally:
        kill_hard(process)
        admin = redis.Redis(port=secured.port, password=WRONG)
        admin.config_set("requirepass", PASSWORD)
        admin.close()
    text = log.read_text()
    assert code == 2, tail(log)
    last = text.strip().splitlines()[-1]
    assert last.startswith("churnwatch: error: Redis at redis://:***@") and \
        "refused the login" in last
    assert PASSWORD not in text and WRONG not in text


def test_the_store_and_the_source_retry_lost_connections_but_not_a_refused_login(
        secured: SecuredRedis) -> None:
    store = RedisStore(secured.url(WRONG), 4, "auth", max_wait=None)  # would wait for ever
    started = time.monotonic()
    with pytest.raises(redis.AuthenticationError):
        store.load_shard(0)
    assert time.monotonic() - started < 5
    store.close()
    source = RedisStreamSource(secured.url(WRONG), ["auth:events:0"])
    partition = source.build_part("input", "auth:events:0", None)
    with pytest.raises(redis.AuthenticationError):
        partition.next_batch()
    partition.close()
    # A Redis that is not there: waited for (the source backs off and returns nothing).
    down = RedisStreamSource(f"redis://127.0.0.1:{free_port()}/0", ["auth:events:0"])
    waiting = down.build_part("input", "auth:events:0", None)
    assert waiting.next_batch() == [] and waiting.next_awake() is not None
    waiting.close()
    assert is_lost_connection(redis.ConnectionError("Connection refused"))


_SAFE = st.text(st.characters(min_codepoint=33, max_codepoint=126,
                              exclude_characters="@/:?#[]%"), min_size=6, max_size=40)


@given(user=st.text(st.characters(min_codepoint=97, max_codepoint=122), max_size=8),
       password=_SAFE, host=st.sampled_from(["127.0.0.1", "db.internal", "redis"]),
       scheme=st.sampled_from(["redis", "rediss"]))
def test_redact_url_never_keeps_the_password(user: str, password: str, host: str,
                                             scheme: str) -> None:
    url = f"{scheme}://{user}:{password}@{host}:6379/0"
    shown = redact_url(url)
    assert password not in shown.replace(f"{scheme}://{user}:***@{host}:6379/0", "")
    assert shown == f"{scheme}://{user}:***@{host}:6379/0"


def test_simulate_publish_needs_the_monitors_redis_and_its_password(
        secured: SecuredRedis) -> None:
    # Publishing a simulated shop into a private Redis would feed no monitor.
    result = churnwatch("simulate", "--publish", "--customers", "3", env={})
    assert result.returncode == 2
    assert "simulate --publish works on the monitor's Redis" in assert_one_clean_line(result)
    result = churnwatch("simulate", "--publish", "--customers", "3",
                        env={"CHURNWATCH_REDIS_URL": secured.url(WRONG)})
    assert result.returncode == 2
    assert "refused the login" in assert_one_clean_line(result, WRONG)
    result = churnwatch("simulate", "--publish", "--customers", "3", "--days", "30",
                        env={"CHURNWATCH_REDIS_URL": secured.url()})
    assert result.returncode == 0, result.stderr
    client = redis.Redis(port=secured.port, password=PASSWORD)
    assert sum(client.xlen(f"churnwatch:events:{p}") for p in range(4)) > 0
    client.close()
