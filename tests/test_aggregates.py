"""The shard's typed aggregates: their stored form round-trips, blobs written before the keys
were typed read back, and a segment whose name holds ``|`` is counted under its own name by
every reader (before the typed keys, the exporter and the segments overview lost it and the
demo's terminal view crashed on it)."""

from __future__ import annotations

import doctest
import json
import sys
from pathlib import Path

import msgpack
import redis
from churnwatch.metrics.business import BusinessCollector
from churnwatch.state.base import StateStore
from churnwatch.state.memory import MemoryStore
from churnwatch.state.redis_store import RedisStore
from churnwatch.web.worklist import segments_overview
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.commands.demo import LiveSummary, render
from churnwatch.commands.status import monitor_status
from churnwatch.core import aggregates
from churnwatch.core.aggregates import (
    COUNTER_TYPES,
    GAUGE_TYPES,
    SCORE_BANDS,
    AggregateKey,
    BandCustomers,
    ComponentCount,
    ComponentSum,
    HighValueAtRisk,
    RecoveryCount,
    ScoredCustomers,
    ScoreSum,
    ShardAggregates,
    SuddenDropCount,
    TierCustomers,
    TransitionCount,
    WinbackCount,
    decode_key,
    encode_key,
)
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig, parse_config
from churnwatch.core.customer import DAY
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event
from churnwatch.core.priors import PopulationPriors
from churnwatch.core.records import Incoming, ShardState
from churnwatch.core.winback import GROUPS, WINBACK_COUNTERS, winback_report

DATA = Path(__file__).parent / "data"
BLOB = DATA / "shard_wire_v1.msgpack"


def old_config() -> ChurnwatchConfig:
    """The configuration the v1 blob was written under (tests/data/make_shard_wire_v1.py)."""
    sys.path.insert(0, str(DATA))
    try:
        from make_shard_wire_v1 import CONFIG
    finally:
        sys.path.remove(str(DATA))
    return CONFIG


def test_the_aggregates_module_doctests_pass() -> None:
    failed, tried = doctest.testmod(aggregates)
    assert failed == 0 and tried >= 20


# -- the stored form ------------------------------------------------------------------------

free_text = st.text(max_size=20)  # segment or playbook names: anything, "|" included
tiers = st.sampled_from(TIERS)
keys: st.SearchStrategy[AggregateKey] = st.one_of(
    st.builds(TierCustomers, free_text, tiers),
    st.builds(BandCustomers, free_text, st.sampled_from(SCORE_BANDS)),
    st.builds(ScoreSum, free_text),
    st.builds(ScoredCustomers, free_text),
    st.builds(ComponentSum, free_text, st.sampled_from(COMPONENTS)),
    st.builds(ComponentCount, free_text, st.sampled_from(COMPONENTS)),
    st.builds(HighValueAtRisk, free_text),
    st.builds(TransitionCount, free_text, tiers, tiers),
    st.builds(RecoveryCount, free_text, tiers),
    st.builds(SuddenDropCount, free_text),
    st.builds(WinbackCount, st.sampled_from(WINBACK_COUNTERS), free_text,
              st.sampled_from(GROUPS)),
)
values = st.floats(allow_nan=False, allow_infinity=False)


@given(keys)
def test_every_key_round_trips_through_its_stored_string(key: AggregateKey) -> None:
    text = encode_key(key)
    assert decode_key(text) == key
    assert type(decode_key(text)) is type(key)


@given(st.text(max_size=40))
def test_any_stored_string_decodes_to_nothing_or_to_the_key_that_writes_it(text: str) -> None:
    key = decode_key(text)
    assert key is None or encode_key(key) == text


@given(st.dictionaries(keys, values, max_size=30))
def test_a_shard_state_round_trips_through_msgpack_whatever_its_segment_names(
        entries: dict[AggregateKey, float]) -> None:
    state = ShardState()
    state.gauges = {k: v for k, v in entries.items() if isinstance(k, GAUGE_TYPES)}
    state.counters = {k: v for k, v in entries.items() if isinstance(k, COUNTER_TYPES)}
    blob = msgpack.packb(state.to_wire())
    again = ShardState.from_wire(msgpack.unpackb(blob, strict_map_key=False))
    assert again.gauges == state.gauges and again.counters == state.counters
    assert msgpack.packb(again.to_wire()) == blob


@given(st.dictionaries(st.text(max_size=30), values, max_size=10),
       st.dictionaries(st.text(max_size=30), values, max_size=10))
def test_entries_of_no_known_family_are_kept_and_written_back(
        gauges: dict[str, float], counters: dict[str, float]) -> None:
    assert ShardAggregates.from_wire(gauges, counters).to_wire() == (gauges, counters)


def test_keys_of_different_families_never_meet_in_one_map() -> None:
    # NamedTuples compare as tuples: the family field keeps same-shaped keys apart.
    assert len({ScoreSum("a"), ScoredCustomers("a"), HighValueAtRisk("a"),
                SuddenDropCount("a")}) == 4
    assert ComponentSum("a", "recency") != ComponentCount("a", "recency")


# -- a blob written before the keys were typed ----------------------------------------------

def test_a_shard_blob_written_before_typed_keys_reads_back_and_rewrites_byte_for_byte() -> None:
    blob = BLOB.read_bytes()
    written = json.loads((DATA / "shard_wire_v1.json").read_text())
    state = ShardState.from_wire(msgpack.unpackb(blob, strict_map_key=False))
    assert state.aggregates.unknown_gauges == {} and state.aggregates.unknown_counters == {}
    assert {encode_key(k): v for k, v in state.gauges.items()} == written["gauges"]
    assert {encode_key(k): v for k, v in state.counters.items()} == written["counters"]
    assert state.watermark == written["watermark"]
    # Every family is in it, and the segment with a bar in its name decodes whole.
    assert {type(k) for k in state.gauges} == set(GAUGE_TYPES)
    assert {type(k) for k in state.counters} == set(COUNTER_TYPES)
    assert state.gauges[TierCustomers("pets|dogs", "churned")] == 7
    assert state.counters[TransitionCount("pets|dogs", "watch", "at_risk")] == 10
    assert state.counters[WinbackCount("recovered", "call_them", "treated")] > 0
    # The aggregates written back unchanged, so a process of the previous version reads them
    # too. (The priors beside them are rewritten in their own newer format, version 3.)
    priors, *rest = state.to_wire()
    old_priors, *old_rest = msgpack.unpackb(blob, strict_map_key=False)
    assert msgpack.packb(rest) == msgpack.packb(old_rest)
    assert PopulationPriors.from_wire(priors).sample == PopulationPriors.from_wire(
        old_priors).sample


def _store_with_old_blob(redis_url: str) -> RedisStore:
    client = redis.Redis.from_url(redis_url)
    client.set("cw:{s0}:shard", BLOB.read_bytes())  # as the previous version's commit left it
    client.close()
    return RedisStore(redis_url, 1, "cw")


def test_every_reader_takes_the_old_blob_from_redis(redis_url: str) -> None:
    config = old_config()
    store = _store_with_old_blob(redis_url)
    try:
        written = json.loads((DATA / "shard_wire_v1.json").read_text())
        registry = CollectorRegistry()
        registry.register(BusinessCollector(store, config))

        def metric(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        for segment in ("skincare", "pets|dogs", "other", "unassigned"):
            for tier in TIERS:
                stored = written["gauges"].get(f"customers|{segment}|{tier}", 0.0)
                assert metric("churnwatch_customers", segment=segment, tier=tier) == stored
            assert metric("churnwatch_sudden_drops_total", segment=segment) == \
                written["counters"][f"sudden_drops|{segment}"]
        assert metric("churnwatch_state_customers") == 40
        assert metric("churnwatch_tier_transitions_total", segment="pets|dogs",
                      from_tier="at_risk", to_tier="churned") == 10
        assert metric("churnwatch_winback_assigned_total", playbook="call_them",
                      group="treated") == \
            written["counters"]["winback_assigned|call_them|treated"]
        overview = {s["segment"]: s for s in segments_overview(store, config)["segments"]}
        assert overview["pets|dogs"]["tiers"] == {"healthy": 3, "watch": 0, "at_risk": 0,
                                                  "churned": 7}
        assert overview["pets|dogs"]["turned_churned"] == 10
        assert overview["pets|dogs"]["recoveries"] == 3
        [call_them] = [r for r in winback_report(store.shard_states(), config)
                       if r["playbook"] == "call_them"]
        assert call_them["treated"]["assigned"] + call_them["holdout"]["assigned"] == sum(
            v for k, v in written["counters"].items() if k.startswith("winback_assigned|"))
        assert store.customer_count() == 40
        status = monitor_status(store, config)
        assert status.segments["pets|dogs"] == {"healthy": 3, "watch": 0, "at_risk": 0,
                                                "churned": 7}
        assert sum(status.tiers.values()) == 40
        view = render(store, LiveSummary(), config)
        assert any(line.split()[:1] == ["pets|dogs"] and line.split()[1:] == ["3", "0", "0",
                                                                               "7"]
                   for line in view.splitlines()), view
    finally:
        store.close()


# -- the bug the typed keys fix, end to end -------------------------------------------------

BARRED = parse_config({"segments": {"pets|dogs": {}, "cats": {}}, "state": {"shards": 1},
                       "source": {"stream_partitions": 1}}, source="test.toml")
T0 = 1_700_000_000.0


def _fill(store: StateStore) -> None:
    engine = ShardEngine(0, BARRED, store.load_shard(0))
    events = []
    for n, segment in enumerate(["pets|dogs"] * 3 + ["cats"] * 2):
        cid = f"c{n}"
        events.append(Event(cid, "profile", T0, attributes={"segment": segment}))
        events += [Event(cid, "order", T0 + d * DAY, amount=20.0) for d in range(0, 60, 15)]
    items = [Incoming(e, 5, n + 1) for n, e in enumerate(sorted(events, key=lambda e: e.ts))]
    ids = list(dict.fromkeys(i.event.customer_id for i in items))
    result = engine.process(items, store.load_customers(0, ids), T0 + 60 * DAY)
    store.commit(0, engine.state, result.changed, result.transitions)


def test_a_segment_whose_name_holds_a_bar_is_counted_under_its_own_name() -> None:
    store = MemoryStore(1)
    _fill(store)
    registry = CollectorRegistry()
    registry.register(BusinessCollector(store, BARRED))
    counted = {segment: sum(registry.get_sample_value(
        "churnwatch_customers", {"segment": segment, "tier": tier}) or 0 for tier in TIERS)
        for segment in BARRED.segments}
    assert counted == {"pets|dogs": 3, "cats": 2, "other": 0, "unassigned": 0}
    overview = {s["segment"]: s["customers"] for s in segments_overview(store, BARRED)[
        "segments"]}
    assert overview == counted
    assert "pets|dogs" in render(store, LiveSummary(), BARRED)


def test_a_segment_with_a_bar_no_longer_configured_counts_as_other() -> None:
    store = MemoryStore(1)
    _fill(store)
    later = parse_config({"segments": {"cats": {}}}, source="later.toml")
    registry = CollectorRegistry()
    registry.register(BusinessCollector(store, later))
    assert registry.get_sample_value("churnwatch_state_customers") == 5
    assert sum(registry.get_sample_value("churnwatch_customers",
                                         {"segment": "other", "tier": tier}) or 0
               for tier in TIERS) == 3
