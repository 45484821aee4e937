"""One contract, every store: MemoryStore, and RedisStore against a real redis-server and
against a real three-node Redis Cluster (tests/redis_cluster.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from churnwatch.state.base import LayoutMismatch, StateStore, StoreLayout, shard_of
from churnwatch.state.memory import MemoryStore
from churnwatch.state.redis_store import RedisStore
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.customer import DAY
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.records import Incoming, ShardState
from churnwatch.replay import replay

CONFIG = ChurnwatchConfig(shards=4, stream_partitions=2)
T0 = 1_700_000_000.0


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore(CONFIG.shards)
        return
    url = request.getfixturevalue("cluster_url" if request.param == "cluster" else "redis_url")
    s = RedisStore(url, CONFIG.shards, "t", max_wait=5)
    yield s
    s.close()


def _commit_orders(store: StateStore, customers: list[str], now: float) -> ShardEngine:
    engines = {}
    for cid in customers:
        shard = shard_of(cid, CONFIG.shards)
        engine = engines.setdefault(shard, ShardEngine(shard, CONFIG, store.load_shard(shard)))
        items = [Incoming(Event(cid, "order", T0 + d * DAY, amount=10.0), 3, d + 1)
                 for d in range(0, 100, 10)]
        loaded = store.load_customers(shard, [cid])
        result = engine.process(items, loaded, now)
        store.commit(shard, engine.state, result.changed, result.transitions)
    return engines


def test_committed_customers_read_back_equal(store: StateStore) -> None:
    _commit_orders(store, ["a", "b", "c"], T0 + 100 * DAY)
    a = store.customer("a")
    assert a is not None and a.purchases.orders == 10 and a.tier == 0
    assert store.customer("zzz") is None
    assert sorted(cid for cid, _ in store.iter_customers()) == ["a", "b", "c"]
    loaded = store.load_customers(shard_of("a", 4), ["a", "nobody"])
    assert loaded["nobody"] is None and loaded["a"].to_wire() == a.to_wire()


def test_due_index_returns_customers_in_review_order(store: StateStore) -> None:
    _commit_orders(store, ["a", "b", "c", "d", "e"], T0 + 100 * DAY)
    for shard in range(CONFIG.shards):
        first = store.next_due(shard)
        due = store.due_customers(shard, float("inf"), 100)
        if not due:
            assert first is None
            continue
        times = [store.customer(c).next_review_at for c in due]
        assert times == sorted(times) and first == pytest.approx(times[0], abs=1)
        assert store.due_customers(shard, times[0] - 10, 100) == []


def test_shard_state_and_transitions_round_trip(store: StateStore) -> None:
    engines = _commit_orders(store, ["a", "b"], T0 + 100 * DAY)
    # A first tier is an assignment, not a transition (a young customer may still move up as
    # their orders come in: the buyer model rates a one-time buyer below a regular).
    assert all(t["from"] != "none" for t in store.recent_transitions(10))
    for shard, engine in engines.items():
        silent = {c: s for c, s in store.load_customers(shard, ["a", "b"]).items()
                  if s is not None and shard_of(c, CONFIG.shards) == shard}
        result = engine.review(silent, T0 + 5000 * DAY)
        store.commit(shard, engine.state, result.changed, result.transitions)
        loaded = store.load_shard(shard)
        assert loaded.gauges == engine.state.gauges
        assert loaded.counters == engine.state.counters
        assert loaded.priors.gap_count == engine.state.priors.gap_count
    transitions = store.recent_transitions(10)
    assert {t["customer_id"] for t in transitions} == {"a", "b"}
    history = store.customer_transitions("a", 5)
    assert [(t["from"], t["to"]) for t in history][:3] == [
        ("at_risk", "churned"), ("watch", "at_risk"), ("healthy", "watch")]
    assert history[0]["reasons"]
    assert len(store.shard_states()) == len(engines)


def test_dead_letters_keep_payload_reason_and_position(store: StateStore) -> None:
    store.add_dead_letters([{"reason": "invalid_json", "detail": "x", "position": "f:3",
                             "payload": "{oops"}])
    [record] = store.dead_letters(5)
    assert (record["reason"], record["position"], record["payload"]) == (
        "invalid_json", "f:3", "{oops")


def _dead(partition: str, offset: int) -> dict[str, object]:
    return {"reason": "invalid_json", "detail": "x", "position": f"{partition}:{offset}",
            "payload": "{oops", "partition": partition, "offset": offset}


def test_dead_letters_are_written_once_per_source_position(store: StateStore) -> None:
    big = 1_714_557_600_000_000_007  # a stream id as an offset: beyond a double's precision
    first = [_dead("redis:s:0", 5), _dead("redis:s:0", 9), _dead("redis:s:1", 2),
             _dead("redis:s:0", big)]
    assert store.add_dead_letters(first) == [True, True, True, True]
    # A resumed source replays its partitions in order: what it sends again is not new, what
    # lies beyond the high-water mark is, and a record without a position is always written.
    again = [_dead("redis:s:0", 9), _dead("redis:s:1", 2), _dead("redis:s:1", 3),
             _dead("redis:s:0", big - 1), _dead("redis:s:0", big + 1),
             {"reason": "too_late", "detail": "y", "position": "p", "payload": ""}]
    assert store.add_dead_letters(again) == [False, False, True, False, True, True]
    assert store.add_dead_letters([]) == []
    positions = sorted(str(r["position"]) for r in store.dead_letters(100))
    assert positions == sorted(["redis:s:0:5", "redis:s:0:9", "redis:s:1:2", f"redis:s:0:{big}",
                                "redis:s:1:3", f"redis:s:0:{big + 1}", "p"])


def test_dead_letters_are_checked_per_record_within_one_call(store: StateStore) -> None:
    batch = [_dead("f", n) for n in (1, 2, 2, 3, 1)] * 300  # over one script's chunk
    written = store.add_dead_letters(batch)
    assert written[:5] == [True, True, False, True, False] and not any(written[5:])
    assert len(store.dead_letters(10_000)) == 3


def test_fresh_shard_is_empty(store: StateStore) -> None:
    state = store.load_shard(3)
    assert isinstance(state, ShardState) and state.gauges == {} and state.watermark == 0.0


def test_a_commit_retried_after_a_lost_reply_is_applied_once(redis_url: str) -> None:
    """The connection drops after EXEC reached Redis: the retry must not append twice."""
    store = RedisStore(redis_url, CONFIG.shards, "t", max_wait=5,
                       layout=StoreLayout(history_kept=30))
    engines = _commit_orders(store, ["a"], T0 + 100 * DAY)
    before = len(store.customer_transitions("a", 30))  # a young customer may have moved up
    [(shard, engine)] = engines.items()
    silent = store.load_customers(shard, ["a"])
    result = engine.review({"a": silent["a"]}, T0 + 5000 * DAY)
    assert result.transitions
    real_execute = redis.client.Pipeline.execute
    calls = {"n": 0}

    def execute_then_lose_the_reply(self, *args, **kwargs):
        reply = real_execute(self, *args, **kwargs)
        if self.transaction:  # the commit's MULTI/EXEC (not the read of its buckets)
            calls["n"] += 1
            if calls["n"] == 1:
                raise redis.ConnectionError("reply lost")
        return reply

    redis.client.Pipeline.execute = execute_then_lose_the_reply
    try:
        store.commit(shard, engine.state, result.changed, result.transitions)
    finally:
        redis.client.Pipeline.execute = real_execute
    assert calls["n"] == 1  # the retry saw the token and did not write again
    assert len(store.customer_transitions("a", 30)) == before + len(result.transitions)
    assert len(store.recent_transitions(30)) == before + len(result.transitions)


def test_iteration_finds_every_customer_whatever_the_id_holds(store: StateStore) -> None:
    # Ids that look like key parts: iteration must neither lose them nor take a customer's
    # transition history (``P:{sN}:h:<id>``) for a customer.
    odd = ["x}:c:y", "{s1}:c:z", "h:q", "plain"]
    _commit_orders(store, odd, T0 + 5000 * DAY)  # old enough for transitions, so histories
    assert sorted(cid for cid, _ in store.iter_customers()) == sorted(odd)
    assert all(store.customer(cid) is not None for cid in odd)


@pytest.mark.parametrize("server", ["redis_url", "cluster_url"])
def test_a_store_written_with_other_counts_is_refused(request: pytest.FixtureRequest,
                                                      server: str, tmp_path) -> None:
    url = request.getfixturevalue(server)
    reader = RedisStore(url, 4, "lay", max_wait=5)
    client = reader.client
    assert reader.load_shard(0).watermark == 0.0  # checked: no record yet, nothing to compare
    assert not client.exists("lay:layout")  # a reader never writes the record
    reader.claim_layout()
    buckets = StoreLayout().buckets
    assert client.hgetall("lay:layout") == {b"shards": b"4", b"buckets": str(buckets).encode(),
                                            b"format": b"2"}
    RedisStore(url, 4, "lay", max_wait=5).claim_layout()  # the same counts: fine
    with pytest.raises(LayoutMismatch, match=f"shards = 4 and customer_buckets = {buckets}"):
        RedisStore(url, 16, "lay", max_wait=5).load_shard(0)
    with pytest.raises(LayoutMismatch, match="this configuration says 4 and 64"):
        RedisStore(url, 4, "lay", max_wait=5, layout=StoreLayout(buckets=64)).recent_transitions(1)
    # Written before the record existed, with 16 shards: a shard beyond 4 gives it away.
    old = RedisStore(url, 16, "old", max_wait=5)
    engine = ShardEngine(9, CONFIG, old.load_shard(9))
    result = engine.process([Incoming(Event("c1", "order", T0), 3, 1)], {"c1": None}, T0)
    old.commit(9, engine.state, result.changed, result.transitions)
    assert not client.exists("old:layout")
    with pytest.raises(LayoutMismatch, match="more than \\[state\\] shards = 4"):
        RedisStore(url, 4, "old", max_wait=5).load_customers(0, ["c1"])
    # And the replay refuses before reading a line.
    events = tmp_path / "e.jsonl"
    events.write_text('{"customer_id": "c2", "type": "order", "ts": 1700000000}\n')
    config = ChurnwatchConfig(shards=8, stream_partitions=2, key_prefix="lay")
    with pytest.raises(LayoutMismatch):
        replay([str(events)], config, lambda: RedisStore(url, 8, "lay", max_wait=5))
    assert client.hgetall("lay:layout")[b"shards"] == b"4"
    for store in (reader, old):
        store.close()


def test_a_reader_never_sees_half_a_layout_record(redis_url: str) -> None:
    # `status` once failed in CI with "written with shards = 4 and customer_buckets = None":
    # it read the record between the monitor's two writes of it. A reader hammers the record
    # while writers claim fresh prefixes; every read must be empty or whole.
    client = redis.Redis.from_url(redis_url)
    partial: list[dict[bytes, bytes]] = []
    done = threading.Event()

    def read_all() -> None:
        while not done.is_set():
            for n in range(40):
                seen = client.hgetall(f"race{n}:layout")
                if seen and len(seen) != 3:
                    partial.append(seen)

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        for _ in range(15):
            client.delete(*[f"race{n}:layout" for n in range(40)])
            for n in range(40):
                writer = RedisStore(redis_url, 4, f"race{n}", max_wait=5)
                writer.claim_layout()
                writer.close()
    finally:
        done.set()
        reader.join()
        client.close()
    assert not partial, partial[:3]
