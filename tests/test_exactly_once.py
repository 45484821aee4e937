"""End to end, ``churnwatch run`` against a real redis-server: crashes, Redis outages and a
two-process cluster all end in exactly the state of one uninterrupted run.

One redis-server for the module holds a deterministic stream of 200,000 events (a few of them
poison) in its four partition streams; each scenario runs ``churnwatch run --clock event
--stop-at-end`` as subprocesses under its own key prefix and is compared, key by key, with the
uninterrupted run: every customer's stored state, the due index, the shard priors and counters,
and every tier transition written (so none lost, none doubled). Event clock makes a run a pure
function of its input; the live wall clock only changes when silent customers are looked at.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from live_servers import (
    LiveRedis,
    finish,
    free_port,
    kill_hard,
    running_redis,
    shard_progress,
    start_run,
    state_snapshot,
    tail,
    wait_for,
    write_config,
)

from bench.workload import START, write_jsonl
from churnwatch.core.config import load_config
from churnwatch.publish import Publisher, read_lines

pytestmark = pytest.mark.slow

EVENTS = 200_000
CUSTOMERS = 20_000
SEED = 20240501
SPAN_DAYS = 365.0
POISON_EVERY = 4999
RUN_TIMEOUT = 240.0


@dataclass
class Published:
    server: LiveRedis
    workdir: Path
    reference: dict[str, Any]
    reference_dead: list[str]

    def run_args(self, prefix: str, *extra: str) -> list[str]:
        config = write_config(self.workdir / f"{prefix}.toml", prefix)
        return ["--redis-url", self.server.url, "--config", str(config), "--clock", "event",
                "--stop-at-end", "--no-metrics", *extra]


def _dead_positions(client: redis.Redis, prefix: str) -> list[str]:
    return [fields[b"position"].decode()
            for _, fields in client.xrange(f"{prefix}:deadletters")]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    workdir = tmp_path_factory.mktemp("exactly-once")
    path = write_jsonl(workdir / "events.jsonl", EVENTS, CUSTOMERS, SEED,
                       span_days=SPAN_DAYS, poison_every=POISON_EVERY)
    with running_redis() as server:
        config = load_config(write_config(workdir / "publish.toml", "unused"))
        Publisher(server.url, config).publish(read_lines([str(path)]))
        log = workdir / "reference.log"
        finish(start_run(Published(server, workdir, {}, []).run_args("ref"), log),
               RUN_TIMEOUT, log)
        client = server.client()
        yield Published(server, workdir, state_snapshot(client, "ref"),
                        _dead_positions(client, "ref"))


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Key by key; shard aggregates (sums of floats, added up batch by batch) to 1e-6."""
    assert sorted(got) == sorted(want), "different keys"
    customers = 0
    for key, value in want.items():
        if key.endswith(":shard"):
            priors, watermark, gauges, counters = value
            g_priors, g_watermark, g_gauges, g_counters = got[key]
            assert (g_priors, g_watermark, g_counters) == (priors, watermark, counters), key
            for name in set(gauges) | set(g_gauges):
                assert math.isclose(g_gauges.get(name, 0.0), gauges.get(name, 0.0),
                                    rel_tol=1e-9, abs_tol=1e-6), (key, name)
        else:
            assert got[key] == value, key
            customers += key.count(":") > 2 and ":k:" in key  # P:{sN}:k:<bucket>:<customer>
    assert customers > CUSTOMERS * 0.9


def _progress(client: redis.Redis, prefix: str) -> float:
    mark = shard_progress(client, prefix, 16)
    return (mark - START) / (SPAN_DAYS * 86400.0) if mark else 0.0


def test_killed_and_restarted_runs_end_in_the_state_of_an_uninterrupted_run(
        published: Published, tmp_path: Path) -> None:
    client = published.server.client()
    recovery = tmp_path / "recovery"
    args = published.run_args("kill", "--recovery-dir", str(recovery),
                              "--snapshot-interval", "0.5")
    log = tmp_path / "run.log"
    kills = []
    for fraction in (0.15, 0.4, 0.65, 0.85):
        process = start_run(args, log)
        wait_for(lambda f=fraction, p=process: _progress(client, "kill") >= f or p.poll()
                 is not None, RUN_TIMEOUT, f"progress {fraction:.0%}")
        assert process.poll() is None, f"the run ended before the kill:\n{tail(log)}"
        kill_hard(process)
        kills.append(_progress(client, "kill"))
    assert kills == sorted(kills) and kills[-1] < 1.0
    finish(start_run(args, log), RUN_TIMEOUT, log)

    assert_same_state(state_snapshot(client, "kill"), published.reference)
    dead = _dead_positions(client, "kill")
    assert sorted(dead) == sorted(published.reference_dead)  # dead letters: exactly once
    assert len(published.reference_dead) == EVENTS // POISON_EVERY


def test_a_redis_outage_mid_run_is_waited_out_and_loses_nothing(published: Published,
                                                                tmp_path: Path) -> None:
    server = published.server
    log = tmp_path / "run.log"
    process = start_run(published.run_args("outage"), log)
    try:
        wait_for(lambda: _progress(server.client(), "outage") >= 0.3 or process.poll()
                 is not None, RUN_TIMEOUT, "progress 30%")
        assert process.poll() is None, tail(log)
        server.stop()  # a clean shutdown: the append-only file keeps everything acknowledged
        time.sleep(3.0)
        assert process.poll() is None, f"the run died with Redis:\n{tail(log)}"
        server.start()
        finish(process, RUN_TIMEOUT, log)
    finally:
        kill_hard(process)
    text = log.read_text()
    assert "retrying" in text, "the outage should be logged"
    assert_same_state(state_snapshot(server.client(), "outage"), published.reference)


def test_two_processes_as_one_cluster_end_in_the_state_of_one_process(published: Published,
                                                                      tmp_path: Path) -> None:
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    logs = [tmp_path / f"process-{i}.log" for i in range(2)]
    processes = [start_run(published.run_args("cluster", "-i", str(i), "-a", addresses), logs[i])
                 for i in range(2)]
    try:
        for process, log in zip(processes, logs, strict=True):
            finish(process, RUN_TIMEOUT, log)
    finally:
        for process in processes:
            kill_hard(process)
    client = published.server.client()
    assert_same_state(state_snapshot(client, "cluster"), published.reference)
    assert sorted(_dead_positions(client, "cluster")) == sorted(published.reference_dead)
