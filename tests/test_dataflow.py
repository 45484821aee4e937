"""The dataflow in-process against a real redis-server: one worker, then a 2-worker cluster."""

from __future__ import annotations

import json

import msgpack
import redis
from bytewax.testing import TestingSource, cluster_main, run_main
from churnwatch.dataflows.flow import FlowSettings, build_flow
from churnwatch.dataflows.messages import RawMessage
from churnwatch.state.checkpoint import decode_states
from churnwatch.state.redis_store import RedisStore
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.aggregates import TierCustomers
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.simulator import ShopSimulator

CONFIG = ChurnwatchConfig(shards=8, stream_partitions=2, batch_size=500)


def messages(extra_bad: bool = True) -> list[RawMessage]:
    sim = ShopSimulator(customers=120, seed=3, start=1_650_000_000.0, days=300)
    out = [RawMessage("file:/sim", n + 1, json.dumps(e).encode(), f"sim:{n + 1}", 0.0)
           for n, e in enumerate(sim.events())]
    if extra_bad:
        bad = [b"not json", b'{"customer_id": "x", "type": "order", "ts": "yesterday"}',
               b'{"type": "order"}', b"\x93\x01\x02\x03"]
        # From a stream, where a payload that is not JSON is tried as msgpack (a file is JSON
        # Lines: there the msgpack array would be invalid_json too).
        out += [RawMessage("redis:bad", i + 1, p, f"bad:{i + 1}", 0.0, source="redis")
                for i, p in enumerate(bad)]
    return out


def snapshot(url: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(url)
    keys = sorted(k for k in client.keys("cw:*") if b":k:" in k)
    out = {}
    for key in keys:  # a bucket's checkpoint: one entry a customer
        out.update({key + b":" + cid.encode(): msgpack.packb(state.to_wire())
                    for cid, state in decode_states([client.get(key)])})
    return out


def run_flow(url: str, workers: int) -> None:
    settings = FlowSettings(CONFIG, lambda: RedisStore(url, CONFIG.shards, "cw", max_wait=10))
    flow = build_flow(settings, TestingSource(messages(), batch_size=500))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)


def test_flow_scores_customers_and_dead_letters_bad_input(redis_url: str) -> None:
    run_flow(redis_url, 1)
    store = RedisStore(redis_url, CONFIG.shards, "cw")
    customers = dict(store.iter_customers())
    assert len(customers) == 120
    assert all(0 <= s.score <= 100 for s in customers.values())
    reasons = sorted(d["reason"] for d in store.dead_letters(10))
    assert reasons == ["invalid_field", "invalid_json", "missing_field", "not_an_object"]
    tiers = {}
    for shard in store.shard_states():
        for key, value in shard.gauges.items():
            if isinstance(key, TierCustomers):
                tiers[key] = tiers.get(key, 0) + value
    assert sum(tiers.values()) == 120


def test_two_workers_give_exactly_the_state_of_one(redis_url: str, redis_server) -> None:
    run_flow(redis_url, 1)
    single = snapshot(redis_url)
    redis.Redis.from_url(redis_url).flushall()
    run_flow(redis_url, 2)
    assert snapshot(redis_url) == single
    assert len(single) > 100  # customers


def test_replaying_the_same_input_again_changes_nothing(redis_url: str) -> None:
    run_flow(redis_url, 1)
    first = snapshot(redis_url)
    run_flow(redis_url, 1)
    assert snapshot(redis_url) == first
