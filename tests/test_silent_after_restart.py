"""Live (wall clock): silent customers of shards that receive no event are still reviewed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from churnwatch.state.redis_store import RedisStore
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.aggregates import TierCustomers
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.simulator import DAY, ShopSimulator, write_jsonl


def tier_counts(store: RedisStore) -> dict[str, float]:
    counts: dict[str, float] = {}
    for shard in store.shard_states():
        for key, value in shard.gauges.items():
            if isinstance(key, TierCustomers):
                counts[key.tier] = counts.get(key.tier, 0.0) + value
    return counts


def test_a_restarted_live_monitor_reviews_silent_customers_without_new_events(
        redis_url: str, tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    two_years_ago = time.time() - 730 * DAY
    write_jsonl(str(history), ShopSimulator(customers=60, seed=4, start=two_years_ago, days=300))
    replay = subprocess.run([sys.executable, "-m", "churnwatch.cli", "replay", str(history),
                             "--redis-url", redis_url], capture_output=True, text=True,
                            timeout=300)
    assert replay.returncode == 0, replay.stderr
    store = RedisStore(redis_url, ChurnwatchConfig().shards, "cw")
    before = tier_counts(store)
    assert before.get("healthy", 0) > 0  # as of its last event, many were still buying

    def overdue() -> int:
        now = time.time()
        return sum(len(store.due_customers(shard, now - 5, 1000))
                   for shard in range(ChurnwatchConfig().shards))

    assert overdue() > 0  # a year has passed since the history ended: reviews are due
    monitor = subprocess.Popen([sys.executable, "-m", "churnwatch.cli", "run", "--source",
                                "redis", "--clock", "wall", "--redis-url", redis_url,
                                "--no-metrics"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and overdue():
            assert monitor.poll() is None, monitor.stderr.read() if monitor.stderr else ""
            time.sleep(1)
    finally:
        monitor.terminate()
        monitor.wait(timeout=30)
    assert overdue() == 0  # every shard reviewed its silent customers, no event needed
    after = tier_counts(store)
    assert after.get("healthy", 0) == 0 and after.get("churned", 0) > before.get("churned", 0)
    silence = [t for t in store.recent_transitions(1000) if t["cause"] == "silence"]
    assert silence and all(t["to"] in ("watch", "at_risk", "churned") for t in silence)
