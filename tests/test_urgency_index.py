"""The urgency index, one contract for both stores: a page read from the index equals the page
computed the slow way from every customer, through tier, segment and value changes, customers
losing their score, and commits with or without a load first."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from churnwatch.state.base import StateStore, UrgencySelection, shard_of, urgency_score
from churnwatch.state.memory import MemoryStore
from churnwatch.state.redis_store import RedisStore
from churnwatch.web.worklist import urgency_key
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.core.customer import CustomerState
from churnwatch.core.records import ShardState
from churnwatch.core.signals import Purchases

SHARDS = 4
SEGMENTS = (None, "fashion", "skincare", "odd segment é")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore(SHARDS)
        return
    url = request.getfixturevalue("redis_url")
    s = RedisStore(url, SHARDS, "u", max_wait=5)
    yield s
    s.close()


def random_state(rng: random.Random) -> CustomerState:
    state = CustomerState(first_seen=1_600_000_000.0)
    state.segment = rng.choice(SEGMENTS)
    if rng.random() < 0.1:
        return state  # not scored yet: not on the worklist
    state.score = round(rng.choice([rng.uniform(0, 100), 25.0, 50.0]), 2)
    state.tier = rng.randrange(4)
    state.tier_since = rng.choice([1_650_000_000.0, 1_650_000_000.0 + rng.randrange(10**7)])
    state.scored_at = state.tier_since + rng.randrange(10**6)
    state.high_value = rng.random() < 0.2
    if rng.random() < 0.8:  # some never ordered: ranked from their first sighting
        last = state.scored_at - rng.choice([0, 10, 200, 400]) * 86400.0 - rng.randrange(10**5)
        state.purchases = Purchases(rng.randrange(1, 9), last - 86400.0, last,
                                    rng.choice([40.0, 40.0, rng.uniform(0, 5000)]), 0.0)
    return state


def write(store: StateStore, states: dict[str, CustomerState], load_first: bool) -> None:
    by_shard: dict[int, dict[str, CustomerState]] = {}
    for cid, state in states.items():
        by_shard.setdefault(shard_of(cid, SHARDS), {})[cid] = state
    for shard, changed in by_shard.items():
        if load_first:
            store.load_customers(shard, list(changed))
        store.commit(shard, ShardState(), changed, [])


def slow_page(everyone: dict[str, CustomerState], selection: UrgencySelection, offset: int,
              limit: int) -> tuple[list[str], int]:
    rows = [(cid, s) for cid, s in everyone.items()
            if s.score is not None and s.tier in selection.tiers
            and (selection.segment_filter is None or selection.segment_filter(s.segment))
            and (selection.value_tier is None
                 or s.high_value == (selection.value_tier == "high"))]
    rows.sort(key=lambda r: urgency_key(r[0], r[1]))
    return [cid for cid, _ in rows[offset:offset + limit]], len(rows)


SELECTIONS = [
    UrgencySelection(frozenset({2, 3})),
    UrgencySelection(frozenset({0, 1, 2, 3})),
    UrgencySelection(frozenset({1}), value_tier="high"),
    UrgencySelection(frozenset({2, 3}), value_tier="standard"),
    UrgencySelection(frozenset({2, 3}), segment_filter=lambda s: s == "fashion"),
    UrgencySelection(frozenset({0, 3}), segment_filter=lambda s: s in (None, "odd segment é")),
]


def check_pages(store: StateStore, everyone: dict[str, CustomerState]) -> None:
    for selection in SELECTIONS:
        for offset, limit in ((0, 7), (5, 11), (0, 1000), (300, 5)):
            expected, total = slow_page(everyone, selection, offset, limit)
            rows, got_total = store.urgency_page(selection, offset, limit)
            assert [cid for cid, _ in rows] == expected, (selection, offset, limit)
            assert got_total == total


def test_index_pages_equal_the_slow_order_through_changes(store: StateStore) -> None:
    rng = random.Random(7)
    everyone = {f"c{i:03d}": random_state(rng) for i in range(240)}
    write(store, everyone, load_first=False)
    check_pages(store, everyone)
    for round_number in range(3):
        # A third change tier, score, value or segment (some lose their score), committed
        # after a load (as the dataflow does) or without one (as a bulk loader does).
        changed = {cid: random_state(rng) for cid in rng.sample(sorted(everyone), 80)}
        everyone.update(changed)
        write(store, changed, load_first=round_number % 2 == 0)
        check_pages(store, everyone)


def test_customer_moved_to_another_segment_is_listed_once(store: StateStore) -> None:
    state = random_state(random.Random(1))
    state.score, state.tier, state.segment = 10.0, 3, "fashion"
    write(store, {"mover": state}, load_first=True)
    moved = CustomerState.from_wire(state.to_wire())
    moved.segment = "skincare"
    write(store, {"mover": moved}, load_first=True)
    rows, total = store.urgency_page(UrgencySelection(frozenset({3})), 0, 10)
    assert [cid for cid, _ in rows] == ["mover"] and total == 1
    rows, total = store.urgency_page(
        UrgencySelection(frozenset({3}), segment_filter=lambda s: s == "fashion"), 0, 10)
    assert rows == [] and total == 0


CUSTOMER = st.tuples(st.integers(0, 3), st.booleans(), st.floats(0, 100),
                    st.integers(0, 2**32 - 1), st.floats(0, 1e7), st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None)
@given(CUSTOMER, CUSTOMER)
def test_index_score_orders_as_the_worklist(a: tuple, b: tuple) -> None:
    states = []
    for tier, high, score, scored_at, spend, last_order in (a, b):
        s = CustomerState(0.0)
        s.tier, s.high_value, s.score, s.scored_at = tier, high, round(score, 2), float(scored_at)
        s.purchases = Purchases(1, float(last_order), float(last_order), spend, 0.0)
        states.append(s)
    x, y = states
    if x.tier == y.tier and x.high_value == y.high_value:  # one index range
        kx, ky = urgency_key("a", x)[:2], urgency_key("a", y)[:2]
        sx, sy = urgency_score(x), urgency_score(y)
        assert sx is not None and sy is not None
        assert (kx < ky) == (sx < sy) and (kx == ky) == (sx == sy)


def test_savable_customers_come_before_the_long_gone() -> None:
    # The shop of issue 21: churned one-time buyers whose one order was 327 days ago, and at-risk
    # customers who ordered a few weeks ago; the long gone spent more.
    now = 1_700_000_000.0
    long_gone, savable = CustomerState(0.0), CustomerState(0.0)
    long_gone.tier, long_gone.score, long_gone.scored_at = 3, 8.0, now
    long_gone.purchases = Purchases(1, now - 327 * 86400.0, now - 327 * 86400.0, 900.0, 0.0)
    long_gone.high_value = True
    savable.tier, savable.score, savable.scored_at = 2, 40.0, now
    savable.purchases = Purchases(4, now - 200 * 86400.0, now - 40 * 86400.0, 160.0, 0.0)
    assert urgency_key("z-savable", savable) < urgency_key("a-gone", long_gone)
    fresh_churned = CustomerState.from_wire(savable.to_wire())
    fresh_churned.tier = 3  # churned, but lately: as savable as the at-risk
    assert urgency_key("b", fresh_churned) < urgency_key("a-gone", long_gone)


def test_pages_concentrated_in_a_few_ranges_read_them_further(store: StateStore) -> None:
    # The most urgent customers all sit in one segment's ranges, so a first read of a few
    # members per range cannot fill the page: the store must read those ranges further.
    rng = random.Random(3)
    everyone = {}
    for n in range(400):
        state = random_state(rng)
        state.tier = 3
        state.score = state.score if state.score is not None else 50.0
        state.high_value = n < 120
        state.segment = "fashion" if n < 120 else rng.choice(SEGMENTS)
        everyone[f"k{n:03d}"] = state
    write(store, everyone, load_first=True)
    selection = UrgencySelection(frozenset({3}))
    for offset, limit in ((0, 60), (20, 30), (100, 40)):
        expected, total = slow_page(everyone, selection, offset, limit)
        rows, got_total = store.urgency_page(selection, offset, limit)
        assert [cid for cid, _ in rows] == expected and got_total == total == 400


def test_reindex_rebuilds_the_index_of_state_written_without_it(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    import redis as redis_client

    from churnwatch.cli import main

    store = RedisStore(redis_url, SHARDS, "cw", max_wait=5)
    rng = random.Random(11)
    everyone = {f"r{i:03d}": random_state(rng) for i in range(150)}
    write(store, everyone, load_first=True)
    selection = UrgencySelection(frozenset({1, 2, 3}))
    before = store.urgency_page(selection, 0, 1000)
    # As an older version left it: customers, no index.
    client = redis_client.Redis.from_url(redis_url)
    for key in list(client.scan_iter(match="cw:*:u*")):
        client.delete(key)
    assert store.urgency_page(selection, 0, 1000) == ([], 0)
    config = tmp_path / "churnwatch.toml"
    config.write_text(f"[state]\nshards = {SHARDS}\n[source]\nstream_partitions = 1\n")
    assert main(["reindex", "--redis-url", redis_url, "--config", str(config)]) == 0
    after = store.urgency_page(selection, 0, 1000)
    assert [c for c, _ in after[0]] == [c for c, _ in before[0]] and after[1] == before[1] > 0
    store.close()


def test_a_writer_rebuilds_once_an_index_of_another_order(redis_url: str  # noqa: F811
                                                          ) -> None:
    import redis as redis_client

    store = RedisStore(redis_url, SHARDS, "up", max_wait=5)
    rng = random.Random(5)
    everyone = {f"o{i:03d}": random_state(rng) for i in range(150)}
    write(store, everyone, load_first=True)
    store.claim_layout()  # a fresh store's first writer records the order it writes
    check_pages(store, everyone)
    # As a version with the former order (high value first, then the lowest score) left it.
    client = redis_client.Redis.from_url(redis_url)
    for key in client.scan_iter(match="up:*:u:*"):
        members = client.zrange(key, 0, -1, withscores=True)
        client.zadd(key, {m: s - (s % 2**47) + (2**47 - 1 - s % 2**47) for m, s in members})
    client.delete("up:urgency_order")
    second = RedisStore(redis_url, SHARDS, "up", max_wait=5)
    expected, _ = slow_page(everyone, SELECTIONS[0], 0, 50)
    assert [c for c, _ in second.urgency_page(SELECTIONS[0], 0, 50)[0]] != expected
    second.claim_layout()  # what `run` and `replay` do before they write
    check_pages(second, everyone)
    assert client.get("up:urgency_order") == b"2"
    for store_ in (store, second):
        store_.close()
