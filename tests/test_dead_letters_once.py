"""Dead letters exactly once across ``kill -9`` (issue 10, section 2).

A stream of good events with poison mixed in (every kind of bad payload) and ``too_late`` events
at the end is read by the real ``churnwatch run`` against a real redis-server, killed with
SIGKILL several times (once shortly after start, before any snapshot) and restarted with
``--recovery-dir``. Each restart re-reads the entries after its last snapshot; still, the Redis
dead-letter stream and the ``--dead-letters-out`` file hold each bad entry once, exactly as an
uninterrupted run does, and the metrics counter of the last run counts only the dead letters
it wrote first. In-process tests pin the store's owner: one per flow, closed when the flow ends.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import redis
from bytewax.testing import run_main
from churnwatch.dataflows.file_source import FileSource
from churnwatch.dataflows.flow import FlowSettings, build_flow
from churnwatch.state.memory import MemoryStore
from live_servers import (
    LiveRedis,
    finish,
    kill_hard,
    running_redis,
    shard_progress,
    start_run,
    tail,
    wait_for,
    write_config,
)

from bench.workload import START, generate
from churnwatch.core.config import ChurnwatchConfig, load_config
from churnwatch.publish import Publisher, read_lines

EVENTS = 60_000
CUSTOMERS = 4_000
SPAN_DAYS = 365.0
POISON_EVERY = 97
LATE = 60
RUN_TIMEOUT = 240.0
POISON = [
    b'{"customer_id": "%s", "type": ["order"], "ts": 1700000000}',
    b'{"customer_id": "%s", "type": "campaign_sent", "ts": 1700000000, "channel": {}}',
    b'{"customer_id": "%s", "type": "order", "ts": 1' + b"0" * 300 + b', "amount": 1}',
    b'{"customer_id": "%s\\ud800", "type": "visit", "ts": 1700000000}',
    b'{"customer_id": "%s", "type": "visit", "ts": 1e30}',
    b'{"customer_id": "%s", "type": "order", "ts": 1700000000, "amount": 1e308}',
    b'{"customer_id": "%s\xff", "type": "visit", "ts": 1700000000}',
    b"[" * 20_000 + b"]" * 20_000,
    b"\xc1\xff not an event %s",
    b"{not json %s",
]


@dataclass
class Published:
    server: LiveRedis
    workdir: Path
    reference: list[str]

    def run_args(self, prefix: str, *extra: str) -> list[str]:
        config = write_config(self.workdir / f"{prefix}.toml", prefix,
                              input={"allowed_lateness_days": 30, "batch_size": 500})
        return ["--redis-url", self.server.url, "--config", str(config), "--clock", "event",
                *extra]


def write_events(path: Path) -> Path:
    with path.open("wb") as out:
        for i, line in enumerate(generate(EVENTS, CUSTOMERS, 7, span_days=SPAN_DAYS)):
            out.write(line + b"\n")
            if i % POISON_EVERY == POISON_EVERY - 1:
                poison = POISON[(i // POISON_EVERY) % len(POISON)]
                out.write((poison.replace(b"%s", f"c{i % CUSTOMERS:07d}".encode())
                           if b"%s" in poison else poison) + b"\n")
        for n in range(LATE):  # months before these customers' newest events: too_late
            out.write(json.dumps({"customer_id": f"c{n:07d}", "type": "visit",
                                  "ts": START + 3600}).encode() + b"\n")
        out.write(msgpack.packb({"customer_id": "c0000001", "type": "visit",
                                 "ts": msgpack.ExtType(9, b"?")}) + b"\n")
    return path


def dead_positions(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(f[b"position"].decode() for _, f in client.xrange(f"{prefix}:deadletters"))


def file_positions(path: Path) -> list[str]:
    return sorted(json.loads(line)["position"] for line in path.read_text().splitlines())


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    workdir = tmp_path_factory.mktemp("dead-letters-once")
    path = write_events(workdir / "events.jsonl")
    with running_redis() as server:
        config = load_config(write_config(workdir / "publish.toml", "unused"))
        Publisher(server.url, config).publish(read_lines([str(path)]))
        log = workdir / "reference.log"
        plain = Published(server, workdir, [])
        finish(start_run(plain.run_args("ref", "--stop-at-end", "--no-metrics"), log),
               RUN_TIMEOUT, log)
        yield Published(server, workdir, dead_positions(server.client(), "ref"))


def _progress(client: redis.Redis, prefix: str) -> float:
    mark = shard_progress(client, prefix, 16)
    return (mark - START) / (SPAN_DAYS * 86400.0) if mark else 0.0


def _dead_letter_counter(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^churnwatch_events_dead_letter_total\{[^}]*\} (\S+)$', text, re.M))


def test_the_reference_run_dead_letters_every_bad_entry_once(published: Published) -> None:
    reference = published.reference
    assert len(reference) == len(set(reference))
    poison = EVENTS // POISON_EVERY + 1
    assert poison + LATE * 0.8 <= len(reference) <= poison + LATE


def test_dead_letters_are_written_and_counted_once_across_kill_9s(
        published: Published, tmp_path: Path) -> None:
    client = published.server.client()
    out = tmp_path / "dead.jsonl"
    args = published.run_args("kill", "--recovery-dir", str(tmp_path / "recovery"),
                              "--snapshot-interval", "0.5", "--dead-letters-out", str(out),
                              "--no-metrics")
    log = tmp_path / "run.log"
    kills = []
    # The first kill comes before any snapshot (the restart then re-reads from the start).
    for fraction in (0.0, 0.05, 0.35, 0.6):
        process = start_run(args, log)
        wait_for(lambda f=fraction, p=process: (_progress(client, "kill") > f
                 and client.exists("kill:deadletters")) or p.poll() is not None,
                 RUN_TIMEOUT, f"progress {fraction:.0%}")
        assert process.poll() is None, f"the run ended before the kill:\n{tail(log)}"
        kill_hard(process)
        kills.append(_progress(client, "kill"))
        dead = dead_positions(client, "kill")
        assert len(dead) == len(set(dead)), "a dead letter was written twice"
    assert kills[-1] < 1.0, kills
    before_last = len(dead_positions(client, "kill"))

    # The last run serves metrics: its counter must count only what it wrote first.
    metrics_args = [a for a in args if a != "--no-metrics"]
    process = start_run([*metrics_args, "--metrics-host", "127.0.0.1", "--metrics-port", "0"],
                        log)
    try:
        url = wait_for(lambda: re.search(r"serves metrics on (http://\S+/metrics)",
                                         log.read_text(errors="replace")) or (
            process.poll() is not None and "exited"), RUN_TIMEOUT, "the metrics server")
        assert process.poll() is None, tail(log)
        metrics_url = url.group(1)  # type: ignore[union-attr]
        wait_for(lambda: dead_positions(client, "kill") == published.reference
                 or process.poll() is not None, RUN_TIMEOUT, "every dead letter")
        time.sleep(1.0)
        counted = _dead_letter_counter(metrics_url)
    finally:
        kill_hard(process)
    assert dead_positions(client, "kill") == published.reference
    assert counted == len(published.reference) - before_last > 0
    assert file_positions(out) == published.reference


def test_a_flow_owns_its_store_and_closes_it_when_it_ends(tmp_path: Path) -> None:
    config = ChurnwatchConfig(shards=4, stream_partitions=2)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b'{"customer_id": "c1", "type": "visit", "ts": 1700000000}\n{oops\n'
                       b'{"customer_id": "c2", "type": ["visit"], "ts": 1700000000}\n')
    opened: list[ClosingStore] = []

    class ClosingStore(MemoryStore):
        closed = False

        def close(self) -> None:
            self.closed = True

    def factory() -> MemoryStore:
        opened.append(ClosingStore(config.shards))
        return opened[-1]

    out = tmp_path / "dead.jsonl"
    settings = FlowSettings(config, factory, dead_letters_path=str(out))
    flow = build_flow(settings, FileSource([events]), "file")
    run_main(flow)
    assert len(opened) == 1 and opened[0].closed
    assert len(opened[0].dead_letters(10)) == 2
    run_main(build_flow(settings, FileSource([events]), "file"))  # same settings, a new flow
    assert len(opened) == 2 and opened[1].closed
    # A fresh store takes them again; the file, which already holds them, does not.
    assert len(opened[1].dead_letters(10)) == 2
    assert len(out.read_text().splitlines()) == 2
