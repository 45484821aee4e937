"""The memory store and the Redis store keep the same layout: customers in the same hash
buckets with the same bytes, the same short per-customer history, streams retained alike."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import msgpack
import pytest
import redis
from churnwatch.state.base import LayoutMismatch, StateStore, StoreLayout, bucket_of, shard_of
from churnwatch.state.checkpoint import decode_states
from churnwatch.state.memory import MemoryStore
from churnwatch.state.redis_store import RedisStore
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.config import ChurnwatchConfig, load_config
from churnwatch.core.customer import CustomerState
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event, decode_event
from churnwatch.core.records import Incoming, ShardState
from churnwatch.simulator import ShopSimulator

CONFIG = ChurnwatchConfig(shards=4, stream_partitions=2)
LAYOUT = StoreLayout(buckets=8, transitions_kept=40, history_kept=3, dead_letters_kept=5)


def simulated_events() -> list[Event]:
    sim = ShopSimulator(customers=150, seed=5, start=1_650_000_000.0, days=400)
    out = []
    for n, record in enumerate(sim.events()):
        event = decode_event(json.dumps(record).encode(), position=f"sim:{n}", now=2e9)
        if isinstance(event, Event):
            out.append(event)
    return out


def replay_into(store: StateStore, events: list[Event]) -> int:
    """The dataflow's steps, batch by batch: load the batch's customers, process, commit.
    Returns the transitions committed."""
    engines: dict[int, ShardEngine] = {}
    committed = 0
    for start in range(0, len(events), 400):
        by_shard: dict[int, list[Incoming]] = {}
        for offset, event in enumerate(events[start:start + 400], start + 1):
            by_shard.setdefault(shard_of(event.customer_id, CONFIG.shards), []).append(
                Incoming(event, 7, offset))
        for shard, items in sorted(by_shard.items()):
            engine = engines.setdefault(shard, ShardEngine(shard, CONFIG,
                                                           store.load_shard(shard)))
            loaded = store.load_customers(shard, sorted({i.event.customer_id for i in items}))
            result = engine.process(items, loaded, max(i.event.ts for i in items))
            store.commit(shard, engine.state, result.changed, result.transitions)
            committed += len(result.transitions)
    return committed


@pytest.fixture()
def both(redis_url: str) -> Iterator[tuple[MemoryStore, RedisStore, redis.Redis]]:  # noqa: F811
    memory = MemoryStore(CONFIG.shards, LAYOUT, prefix="lay")
    store = RedisStore(redis_url, CONFIG.shards, "lay", max_wait=5, layout=LAYOUT)
    client = redis.Redis.from_url(redis_url)
    yield memory, store, client
    store.close()
    client.close()


def test_both_stores_hold_the_same_buckets_histories_and_streams(
        both: tuple[MemoryStore, RedisStore, redis.Redis]) -> None:
    memory, store, client = both
    events = simulated_events()
    transitions = replay_into(memory, events)
    assert replay_into(store, events) == transitions > 2 * LAYOUT.transitions_kept

    # Customers: the same bucket keys, each holding the same customers with the same bytes.
    in_redis = {key.decode(): client.get(key) for key in client.scan_iter(match="lay:*:k:*")}
    assert in_redis == memory.buckets()
    assert len(in_redis) == CONFIG.shards * LAYOUT.buckets  # every bucket in use
    customers = [cid for cid, _ in decode_states(list(in_redis.values()))]
    assert len(customers) == len(set(customers)) > 140
    # No due index in Redis: the review times are in the checkpoints.
    assert not list(client.scan_iter(match="lay:*:d:*"))
    for shard in range(CONFIG.shards):  # the same review order in both
        assert store.due_customers(shard, 2e9, 1000) == memory.due_customers(shard, 2e9, 1000)
        assert store.next_due(shard) == memory.next_due(shard)
    # No key per customer, of any kind.
    assert not [k for k in client.scan_iter(match="lay:*:h:*")]

    # Each customer's history: every change within history_days of the newest, and at least
    # the history_kept newest, newest first, each with its chance (and reason codes); with the
    # words of the moment while the shard's stream retains the transition, without once it
    # does not.
    retained = {(t["customer_id"], t["at"], t["from"], t["to"]): t
                for t in store.recent_transitions(10_000)}
    with_history = with_reasons = beyond_kept = 0
    for cid in customers:
        mine = store.customer_transitions(cid, 10_000)
        assert mine == memory.customer_transitions(cid, 10_000)
        assert all(float(t["at"]) >= float(mine[0]["at"]) - LAYOUT.history_days * 86400.0
                   for t in mine[LAYOUT.history_kept:])
        beyond_kept += len(mine) > LAYOUT.history_kept
        assert [t["at"] for t in mine] == sorted((t["at"] for t in mine), reverse=True)
        with_history += bool(mine)
        for t in mine:
            assert t["from"] != t["to"] and t["cause"] in ("event", "silence")
            assert t["chance"] is not None
            in_stream = retained.get((cid, t["at"], t["from"], t["to"]))
            assert t["reasons"] == (in_stream["reasons"] if in_stream else [])
            with_reasons += in_stream is not None
    assert with_history > 50 and 0 < with_reasons <= LAYOUT.transitions_kept
    assert beyond_kept > 0

    # Transition streams: each shard keeps its share of transitions_kept, exactly.
    per_shard = LAYOUT.transitions_per_shard(CONFIG.shards)
    for shard in range(CONFIG.shards):
        assert client.xlen(f"lay:{{s{shard}}}:transitions") == per_shard
    assert store.recent_transitions(25) == memory.recent_transitions(25)
    assert len(store.recent_transitions(1000)) == LAYOUT.transitions_kept


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_dead_letters_are_retained_by_count_and_by_age(redis_url: str, kind: str  # noqa: F811
                                                       ) -> None:
    def open_store(layout: StoreLayout) -> StateStore:
        if kind == "memory":
            return MemoryStore(CONFIG.shards, layout)
        return RedisStore(redis_url, CONFIG.shards, "dl", max_wait=5, layout=layout)

    def letters(names: range) -> list[dict[str, object]]:
        return [{"reason": "invalid_json", "position": f"p{n}", "payload": "x"} for n in names]

    by_count = open_store(StoreLayout(dead_letters_kept=5, dead_letters_max_age=0))
    by_count.add_dead_letters(letters(range(12)))
    assert [r["position"] for r in by_count.dead_letters(100)] == [
        f"p{n}" for n in range(11, 6, -1)]

    redis.Redis.from_url(redis_url).flushall()
    by_age = open_store(StoreLayout(dead_letters_kept=100, dead_letters_max_age=0.5))
    by_age.add_dead_letters(letters(range(3)))
    time.sleep(0.7)
    by_age.add_dead_letters(letters(range(3, 5)))
    assert [r["position"] for r in by_age.dead_letters(100)] == ["p4", "p3"]


def test_the_layout_comes_from_the_state_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text("[state]\ncustomer_buckets = 64\ntransitions_kept = 800\n"
                    "transitions_max_age_days = 2\ndead_letters_kept = 50\n"
                    "dead_letters_max_age_days = 0\nscore_history_length = 4\n")
    layout = StoreLayout.from_config(load_config(path))
    assert layout == StoreLayout(buckets=64, transitions_kept=800,
                                 transitions_max_age=2 * 86400.0, dead_letters_kept=50,
                                 dead_letters_max_age=0.0, history_kept=4)


def test_one_bucket_holding_thousands_of_customers_reads_and_reviews(
        redis_url: str) -> None:  # noqa: F811
    """The bucket scripts split what they unpack: Lua takes about 8,000 values at once."""
    store = RedisStore(redis_url, 1, "big", max_wait=5, layout=StoreLayout(buckets=1))
    states = {}
    for n in range(6000):
        state = CustomerState(1_700_000_000.0)
        state.next_review_at = 1_700_000_000.0 + n
        states[f"c{n:05d}"] = state
    store.load_customers(0, list(states))
    store.commit(0, ShardState(), states, [])
    loaded = store.load_customers(0, [*states, "nobody"])
    assert loaded.pop("nobody") is None
    assert {c: s.to_wire() for c, s in loaded.items()} == {c: s.to_wire()
                                                          for c, s in states.items()}
    assert store.due_customers(0, 1_700_000_000.0 + 4999, 10_000) == list(states)[:5000]
    assert store.next_due(0) == 1_700_000_000.0
    for state in states.values():
        state.next_review_at = None
    store.commit(0, ShardState(), states, [])
    assert store.next_due(0) is None and store.due_customers(0, 2e9, 10) == []
    store.close()


def test_a_store_of_the_earlier_format_is_converted_by_its_first_writer(
        redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from churnwatch.cli import main

    # What the release before the checkpoints wrote: one hash field per customer, the msgpack
    # of CustomerState.to_wire, in P:{sN}:c:<bucket>, and a layout record without a format.
    memory = MemoryStore(CONFIG.shards, LAYOUT, prefix="up")
    replay_into(memory, simulated_events())
    want = dict(memory.iter_customers())
    client = redis.Redis.from_url(redis_url)
    for cid, state in want.items():
        key = (f"up:{{s{shard_of(cid, CONFIG.shards)}}}:c:"
               f"{bucket_of(cid, CONFIG.shards, LAYOUT.buckets)}")
        client.hset(key, cid, msgpack.packb(state.to_wire()))
        if state.next_review_at is not None:  # and its bucket's due index, as it was
            client.zadd(key.replace(":c:", ":d:"), {cid: state.next_review_at})
    client.hset("up:layout", mapping={"shards": CONFIG.shards, "buckets": LAYOUT.buckets})
    reader = RedisStore(redis_url, CONFIG.shards, "up", max_wait=5, layout=LAYOUT)
    with pytest.raises(LayoutMismatch, match="form of an earlier churnwatch"):
        reader.customer(next(iter(want)))

    config = tmp_path / "churnwatch.toml"
    config.write_text(f"[state]\nshards = {CONFIG.shards}\nkey_prefix = \"up\"\n"
                      f"customer_buckets = {LAYOUT.buckets}\n"
                      f"[source]\nstream_partitions = {CONFIG.stream_partitions}\n")
    assert main(["upgrade", "--redis-url", redis_url, "--config", str(config)]) == 0
    writer = RedisStore(redis_url, CONFIG.shards, "up", max_wait=5, layout=LAYOUT)
    assert list(client.scan_iter(match="up:*:k:*"))
    assert not [k for k in client.scan_iter(match="up:*") if b":c:" in k or b":d:" in k]
    assert client.hget("up:layout", "format") == b"2"
    store = RedisStore(redis_url, CONFIG.shards, "up", max_wait=5, layout=LAYOUT)
    got = dict(store.iter_customers())
    assert len(got) == len(want) > 140
    assert {c: s.to_wire() for c, s in got.items()} == {c: s.to_wire() for c, s in want.items()}
    # In the same buckets as a store written in the new format from the start.
    assert {k.decode() for k in client.scan_iter(match="up:*:k:*")} == set(memory.buckets())
    writer.claim_layout()  # a second start finds nothing to convert
    assert dict(store.iter_customers()).keys() == want.keys()
    for each in (reader, writer, store):
        each.close()
