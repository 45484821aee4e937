"""History published into a running ``churnwatch run`` (wall clock, the default) ends in the
state ``churnwatch replay FILE --as-of T`` gives, T being an instant the live monitor's state
stands at (every customer scored at or before T, none due at or before it): the same tier for
every customer, the same transitions, and no customer changing tier twice at one instant.

Real components only: a redis-server for the monitor, ``churnwatch simulate``, ``run``,
``publish``, ``status``, ``export`` and a ``replay`` into a private Redis, as a user types them.
``CHURNWATCH_LIVE_REPLAY_CUSTOMERS`` sets the shop's size (default 300; the issue's scenario
is 2000).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from churnwatch.state.redis_store import RedisStore
from monitor_process import running_monitor
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.aggregates import TransitionCount
from churnwatch.core.config import load_config

CUSTOMERS = int(os.environ.get("CHURNWATCH_LIVE_REPLAY_CUSTOMERS", "300"))
CONSUMED_TIMEOUT_SECONDS = 240.0
SETTLE_TIMEOUT_SECONDS = 30.0


def churnwatch(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "churnwatch.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (args, result.stderr)
    return result


def tiers(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["customer_id"]: row["tier"] for row in csv.DictReader(f)}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def transitions(paths: list[Path]) -> list[dict[str, object]]:
    records = []
    for path in paths:
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def changed_twice_at_one_instant(records: list[dict[str, object]]) -> list[tuple[str, float]]:
    counts = Counter((str(r["customer_id"]), float(r["at"])) for r in records)  # type: ignore[arg-type]
    return sorted(key for key, n in counts.items() if n > 1)


def test_history_published_into_a_running_monitor_ends_in_replays_state(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    config_path = tmp_path / "churnwatch.toml"
    config_path.write_text('[state]\nkey_prefix = "lr"\n')
    config = load_config(config_path)
    env = {**os.environ, "CHURNWATCH_REDIS_URL": redis_url,
           "CHURNWATCH_CONFIG": str(config_path)}
    churnwatch("simulate", "--customers", str(CUSTOMERS), "--days", "365", "--seed", "3",
               "--out", "shop.jsonl", cwd=tmp_path, env=env)

    live_transitions = tmp_path / "live-transitions.jsonl"
    store = RedisStore(redis_url, config.shards, config.key_prefix)
    with running_monitor(redis_url, config_path, tmp_path / "run",
                         ["--transitions-out", str(live_transitions)]) as monitor:
        churnwatch("publish", "shop.jsonl", cwd=tmp_path, env=env)
        published_at = time.time()
        deadline = time.monotonic() + CONSUMED_TIMEOUT_SECONDS
        while not json.loads(churnwatch("status", "--json", cwd=tmp_path,
                                        env=env).stdout)["consumed"]:
            assert time.monotonic() < deadline, monitor.log_tail()
            time.sleep(1.0)
        # Consumed. Silent customers follow the clock once the monitor has caught up with it:
        # the shards' event time joins the clock, and nobody is left due.
        settled = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while time.monotonic() < settled and not (
                min(s.watermark for s in store.shard_states()) >= published_at
                and not any(store.due_customers(shard, time.time() - 1, 1)
                            for shard in range(config.shards))):
            time.sleep(0.5)
        assert monitor.process.poll() is None, monitor.log_tail()
    stopped_at = time.time()
    churnwatch("export", "--out", "live.csv", cwd=tmp_path, env=env)
    states = [state for _, state in store.iter_customers()]
    counters = [s.counters for s in store.shard_states()]
    store.close()

    # T: an instant the live state stands at: everyone scored by then, nobody due by then.
    scored_last = max(state.scored_at for state in states)
    due_next = min((state.next_review_at for state in states
                    if state.next_review_at is not None), default=math.inf)
    as_of = math.floor(min(stopped_at, due_next - 1))
    assert scored_last <= as_of, (scored_last, due_next, stopped_at)

    private = {k: v for k, v in env.items() if k != "CHURNWATCH_REDIS_URL"}
    churnwatch("replay", "shop.jsonl", "--as-of", iso(as_of), "--export", "replay.csv",
               "--transitions-out", "replay-transitions.jsonl", cwd=tmp_path, env=private)

    live, replayed = tiers(tmp_path / "live.csv"), tiers(tmp_path / "replay.csv")
    assert set(live) == set(replayed) and len(live) == CUSTOMERS
    moved = sorted(c for c in replayed if live[c] != replayed[c])
    assert len(moved) <= 0.005 * CUSTOMERS, [(c, live[c], replayed[c]) for c in moved[:20]]

    live_records = transitions(sorted(tmp_path.glob("live-transitions.jsonl*")))
    replay_records = transitions([tmp_path / "replay-transitions.jsonl"])
    counted = sum(v for c in counters for k, v in c.items() if isinstance(k, TransitionCount))
    assert counted == len(live_records)  # the monitor's counters say what its output says
    assert abs(len(live_records) - len(replay_records)) <= 0.02 * len(replay_records), (
        len(live_records), len(replay_records))
    assert changed_twice_at_one_instant(live_records) == []
    print(f"customers {CUSTOMERS}: {len(moved)} in another tier; transitions live "
          f"{len(live_records)}, replay {len(replay_records)}; twice at one instant live "
          f"{len(changed_twice_at_one_instant(live_records))}, replay "
          f"{len(changed_twice_at_one_instant(replay_records))}; as of {iso(as_of)}")
