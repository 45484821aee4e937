"""The README's recipe "Load your history, then go live", run as written: `replay` the history
into the monitor's Redis up to now, start `churnwatch run` on it, publish new events. The
monitor takes over exactly the tiers a private replay gives, and new events apply on top."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from monitor_process import running_monitor
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.simulator import DAY, ShopSimulator, write_jsonl

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "### Load your history, then go live"


def recipe() -> list[str]:
    """The commands of the README's recipe, in order."""
    text = README.read_text()
    assert HEADING in text, f"README has no '{HEADING}'"
    block = re.search(r"```sh\n(.*?)```", text.split(HEADING, 1)[1], re.S)
    assert block is not None
    return [line.split("  #")[0].strip() for line in block[1].splitlines()
            if line.strip() and not line.startswith("#")]


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # `churnwatch` is this interpreter's, whatever PATH holds.
    line = re.sub(r"^churnwatch\b", f"{sys.executable} -m churnwatch.cli", command)
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def tiers(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["customer_id"]: row for row in csv.DictReader(f)}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_readmes_history_then_live_recipe_hands_replays_tiers_to_the_monitor(
        tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    replay_line, run_line, publish_line = recipe()
    assert replay_line.startswith("churnwatch replay history.jsonl --as-of")
    assert run_line.startswith("churnwatch run")
    assert publish_line.startswith("churnwatch publish new-events.jsonl")

    config = tmp_path / "churnwatch.toml"
    config.write_text("[state]\nshards = 4\n[source]\nstream_partitions = 2\n")
    now = time.time()
    write_jsonl(str(tmp_path / "history.jsonl"),
                ShopSimulator(customers=150, seed=11, start=now - 300 * DAY, days=299))
    env = {**os.environ, "CHURNWATCH_REDIS_URL": redis_url, "CHURNWATCH_CONFIG": str(config)}

    # 1. The history, scored up to now, into the monitor's Redis.
    replayed = shell(replay_line, tmp_path, env)
    assert replayed.returncode == 0, replayed.stderr
    as_of = iso(time.time())
    private = {k: v for k, v in env.items() if k != "CHURNWATCH_REDIS_URL"}
    reference = subprocess.run(
        [sys.executable, "-m", "churnwatch.cli", "replay", "history.jsonl", "--as-of", as_of,
         "--export", "reference.csv"], cwd=tmp_path, env=private, capture_output=True,
        text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    expected = tiers(tmp_path / "reference.csv")

    # 2. The monitor on the same Redis takes over those tiers.
    with running_monitor(redis_url, config, tmp_path / "run") as monitor:
        exported = shell(f"churnwatch export --out live.csv --as-of {as_of}", tmp_path, env)
        assert exported.returncode == 0, exported.stderr
        live = tiers(tmp_path / "live.csv")
        assert set(live) == set(expected)
        moved = [c for c in expected if live[c]["tier"] != expected[c]["tier"]]
        assert moved == [], [(c, expected[c]["tier"], live[c]["tier"]) for c in moved]

        # 3. New events apply on top of the history.
        lost = next(c for c, row in sorted(expected.items()) if row["tier"] == "churned")
        (tmp_path / "new-events.jsonl").write_text(
            f'{{"customer_id": "{lost}", "type": "order", "ts": "{iso(time.time())}", '
            f'"amount": 80, "event_id": "new-1"}}\n')
        published = shell(publish_line, tmp_path, env)
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + 60
        while True:
            exported = shell("churnwatch export --out after.csv", tmp_path, env)
            assert exported.returncode == 0, exported.stderr
            after = tiers(tmp_path / "after.csv")[lost]
            if int(after["orders"]) == int(expected[lost]["orders"]) + 1:
                break
            assert time.monotonic() < deadline, monitor.log_tail()
            time.sleep(0.5)
        assert after["tier"] != "churned"
