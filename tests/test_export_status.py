"""``churnwatch status`` and ``churnwatch export`` against a real redis-server fed by a real
``churnwatch run``: the lag per partition before, during and after consumption, customers per
tier, dead letters, and an export with exactly the columns of ``replay --export``."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_servers import (
    CHURNWATCH,
    LiveRedis,
    kill_hard,
    running_redis,
    start_run,
    tail,
    wait_for,
    write_config,
)

from churnwatch.cli import main
from churnwatch.core.config import TIERS, ChurnwatchConfig, load_config
from churnwatch.export import EXPORT_COLUMNS
from churnwatch.publish import Publisher
from churnwatch.simulator import DAY, ShopSimulator

CUSTOMERS = 80
BAD_LINES = ['{"customer_id": "x1", "type": "teleport", "ts": 1700000000}', "not json"]


@dataclass
class Fed:
    """A Redis holding a simulated shop's streams, and the monitor's configuration."""

    server: LiveRedis
    config_path: Path
    config: ChurnwatchConfig
    events_file: Path
    published: int
    workdir: Path

    def args(self) -> list[str]:
        return ["--redis-url", self.server.url, "--config", str(self.config_path)]

    def monitor(self, name: str) -> subprocess.Popen[bytes]:
        # With a recovery directory, as an operator runs it: a restart reads on where the
        # clean stop left off (without one, it would re-read, and re-dead-letter, everything).
        log = self.workdir / f"{name}.log"
        process = start_run([*self.args(), "--no-metrics", "--recovery-dir",
                             str(self.workdir / "recovery")], log)
        wait_for(lambda: "state in" in log.read_text(), 60, f"monitor {name} to start")
        return process

    def stop(self, process: subprocess.Popen[bytes], name: str) -> None:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=60) == 0, tail(self.workdir / f"{name}.log")
        finally:
            kill_hard(process)


def status(fed: Fed, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    capsys.readouterr()
    assert main(["status", "--json", *fed.args(), *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    workdir = tmp_path_factory.mktemp("export-status")
    config_path = write_config(workdir / "c.toml", "ops", state={"shards": 4},
                               source={"stream_partitions": 2})
    config = load_config(config_path)
    shop = ShopSimulator(customers=CUSTOMERS, seed=7, start=time.time() - 200 * DAY, days=200)
    events = [json.dumps(e) for e in shop.events()]
    events_file = workdir / "shop.jsonl"
    events_file.write_text("\n".join([*events, *BAD_LINES]) + "\n")
    with running_redis() as server:
        publisher = Publisher(server.url, config)
        published = publisher.publish(events_file.read_text().splitlines())
        publisher.close()
        yield Fed(server, config_path, config, events_file, published, workdir)


def test_status_follows_the_lag_down_to_zero_and_up_again(
        fed: Fed, capsys: pytest.CaptureFixture[str]) -> None:
    before = status(fed, capsys)
    assert [p["stream"] for p in before["partitions"]] == ["ops:events:0", "ops:events:1"] \
        or [p["stream"] for p in before["partitions"]] == [
            f"{fed.config.stream_prefix}:{n}" for n in range(2)]
    assert sum(p["lag"] for p in before["partitions"]) == fed.published
    assert all(p["committed_id"] is None and p["last_commit"] is None
               for p in before["partitions"])
    assert before["consumed"] is False and before["customers"] == 0

    monitor = fed.monitor("first")
    try:
        wait_for(lambda: status(fed, capsys)["consumed"], 90, "every entry committed")
    finally:
        fed.stop(monitor, "first")
    after = status(fed, capsys)
    for part in after["partitions"]:
        assert part["lag"] == 0 and part["committed_id"] == part["end_id"]
        assert time.time() - part["last_commit"] < 120
    assert after["customers"] == CUSTOMERS
    assert set(after["tiers"]) == set(TIERS) and sum(after["tiers"].values()) == CUSTOMERS
    assert after["dead_letters"] == len(BAD_LINES)
    # What each shard's buyer model learned, read from the same shard states.
    assert len(after["models"]) == 4
    buyers = set()
    for line in fed.events_file.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("type") == "order":
            buyers.add(event["customer_id"])
    assert sum(m["sampled_buyers"] for m in after["models"]) == len(buyers)
    for model in after["models"]:  # 80 customers: too few in a shard for a fit of its own
        assert model["fits"] == 0 and model["evidence_weight"] is None
        assert model["value_coefficient"] == 0.0 and model["calibrated_horizons"] == []

    # The monitor is stopped: new entries, one of them a dead letter, are a lag of exactly as
    # many entries, and the committed position stays where it was.
    more = [json.dumps({"customer_id": f"late-{n}", "type": "visit",
                        "ts": time.time() - 60}) for n in range(30)] + ["{broken"]
    Publisher(fed.server.url, fed.config).publish(more)
    lagging = status(fed, capsys)
    assert sum(p["lag"] for p in lagging["partitions"]) == len(more)
    assert [p["committed_id"] for p in lagging["partitions"]] == [
        p["committed_id"] for p in after["partitions"]]
    capped = status(fed, capsys, "--scan-limit", "1")
    assert any(p["lag_capped"] for p in capped["partitions"])

    capsys.readouterr()
    assert main(["status", *fed.args()]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["partition", "end", "committed", "lag", "last",
                                             "commit"]
    assert f"{len(more)} entries not yet committed" in table
    assert f"customers: {CUSTOMERS}" in table and "dead letters: 2" in table
    assert "buyer models, shard by shard: fits " in table

    monitor = fed.monitor("second")
    try:
        wait_for(lambda: status(fed, capsys)["consumed"], 90, "the new entries committed")
    finally:
        fed.stop(monitor, "second")
    final = status(fed, capsys)
    assert final["customers"] == CUSTOMERS + 30 and final["dead_letters"] == 3


def test_export_writes_every_customer_with_the_columns_of_replay_export(
        fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monitor = fed.monitor("for-export")
    try:
        wait_for(lambda: status(fed, capsys)["consumed"], 90, "every entry committed")
    finally:
        fed.stop(monitor, "for-export")
    customers = status(fed, capsys)["customers"]
    out = tmp_path / "scores.csv"
    assert main(["export", "--out", str(out), *fed.args()]) == 0
    assert f"exported {customers} customers to {out}" in capsys.readouterr().err
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == customers
    assert len({r["customer_id"] for r in rows}) == customers
    assert all(r["tier"] in TIERS and 0 <= float(r["return_probability"]) <= 1 for r in rows)
    assert all(r["reasons"] for r in rows if r["tier"] in ("at_risk", "churned"))

    # The same columns, in the same order, as a replay of the same events writes.
    replayed = tmp_path / "replayed.csv"
    env_free = subprocess.run(
        [CHURNWATCH, "replay", str(fed.events_file), "--config", str(fed.config_path),
         "--export", str(replayed)], capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert env_free.returncode == 0, env_free.stderr
    with replayed.open() as handle:
        replay_header = next(csv.reader(handle))
    with out.open() as handle:
        assert next(csv.reader(handle)) == replay_header == EXPORT_COLUMNS
    with replayed.open() as handle:
        assert {r["customer_id"] for r in csv.DictReader(handle)} <= \
            {r["customer_id"] for r in rows}

    # To standard output, and as of a given time: the same rows as the file at that time.
    as_of = "2030-01-01T00:00:00Z"
    capsys.readouterr()
    assert main(["export", "--as-of", as_of, *fed.args()]) == 0
    later = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["customer_id"] for r in later] == [r["customer_id"] for r in rows]
    assert all(float(a["days_since_last_order"]) > float(b["days_since_last_order"])
               for a, b in zip(later, rows, strict=True) if b["days_since_last_order"])
