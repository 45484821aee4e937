"""The shop's own segments: values the events declare are labels without a configuration naming
them, up to ``[segments] max_segments``, the rest ``other``; the record of which are kept is
shop-wide in the store, so one worker or two, and a second replay, label alike; ``status`` warns
when the cap is hit. Replays through the real dataflow into a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from churnwatch.metrics.business import BusinessCollector
from churnwatch.state.base import StateStore, StoreLayout, config_with_segments
from churnwatch.state.memory import MemoryStore
from churnwatch.state.redis_store import RedisStore
from prometheus_client import CollectorRegistry
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.commands.status import monitor_status
from churnwatch.core.config import ChurnwatchConfig, ConfigError, parse_config
from churnwatch.export import export_rows
from churnwatch.replay import replay
from churnwatch.simulator import ShopSimulator

START = 1_650_000_000.0
DAY = 86400.0


def shop_file(tmp_path: Path, extra_segments: int = 0) -> Path:
    """The simulator's shop (electronics, fashion, skincare), plus customers declaring
    ``extra_segments`` more values."""
    events = list(ShopSimulator(customers=60, seed=3, start=START, days=200).events())
    for n in range(extra_segments):
        for k in range(3):
            cid = f"extra-{n}-{k}"
            events.append({"customer_id": cid, "type": "profile", "ts": START + n * DAY,
                           "segment": f"brand-{n:02d}"})
            events.append({"customer_id": cid, "type": "order", "ts": START + n * DAY + 60,
                           "amount": 20.0})
    events.sort(key=lambda e: float(e["ts"]))  # type: ignore[arg-type]
    path = tmp_path / "shop.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def replayed(url: str, path: Path, config: ChurnwatchConfig, prefix: str, workers: int = 1
             ) -> RedisStore:
    config = parse_config({"state": {"shards": 4, "key_prefix": prefix},
                           "source": {"stream_partitions": 2},
                           "segments": {"max_segments": config.max_segments}},
                          source="tests/test_discovered_segments.py")

    def factory() -> RedisStore:
        return RedisStore(url, config.shards, prefix, max_wait=5,
                          layout=StoreLayout.from_config(config))

    replay([str(path)], config, factory, as_of=START + 210 * DAY, workers=workers)
    return factory()


def labels(store: RedisStore, config: ChurnwatchConfig) -> dict[str, str]:
    return {str(row["customer_id"]): str(row["segment"])
            for row in export_rows(store, config, START + 210 * DAY)}


def metric_segments(store: StateStore, config: ChurnwatchConfig) -> set[str]:
    registry = CollectorRegistry()
    registry.register(BusinessCollector(store, config))
    return {sample.labels["segment"] for family in registry.collect()
            if family.name == "churnwatch_customers" for sample in family.samples}


def test_the_shops_own_segments_are_kept_without_a_config_naming_them(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    config = ChurnwatchConfig(shards=4, stream_partitions=2)
    store = replayed(redis_url, shop_file(tmp_path), config, "own")
    exported = labels(store, ChurnwatchConfig(shards=4, stream_partitions=2, key_prefix="own"))
    assert set(exported.values()) == {"electronics", "fashion", "skincare"}
    assert metric_segments(store, config) == {"electronics", "fashion", "skincare", "other",
                                              "unassigned"}
    status = monitor_status(store, config)
    assert status.kept_segments == ["electronics", "fashion", "skincare"]
    assert status.refused_segment_count == 0 and "warning" not in status.render()
    store.close()


def test_beyond_the_cap_values_count_as_other_and_status_warns(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    config = ChurnwatchConfig(shards=4, stream_partitions=2, max_segments=4)
    store = replayed(redis_url, shop_file(tmp_path, extra_segments=5), config, "cap")
    kept = store.segment_record().kept
    assert len(kept) == 4
    exported = labels(store, ChurnwatchConfig(shards=4, stream_partitions=2, key_prefix="cap"))
    assert set(exported.values()) == set(kept) | {"other"}
    assert metric_segments(store, config) == set(kept) | {"other", "unassigned"}
    status = monitor_status(store, config)
    assert status.refused_segment_count == 8 - 4
    text = status.render()
    assert "warning: the segment cap is reached ([segments] max_segments = 4): 4 more" in text
    assert all(value in text for value in status.refused_segments)
    store.close()


def test_one_worker_or_two_and_a_second_replay_keep_the_same_segments(
        redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    path = shop_file(tmp_path, extra_segments=2)
    config = ChurnwatchConfig(shards=4, stream_partitions=2)
    one = replayed(redis_url, path, config, "one", workers=1)
    two = replayed(redis_url, path, config, "two", workers=2)
    by_one = labels(one, ChurnwatchConfig(shards=4, stream_partitions=2, key_prefix="one"))
    by_two = labels(two, ChurnwatchConfig(shards=4, stream_partitions=2, key_prefix="two"))
    assert by_one == by_two and "other" not in by_one.values()
    assert sorted(one.segment_record().kept) == sorted(two.segment_record().kept)
    # Over the cap, a second replay into the same store reads the record the first wrote.
    capped = ChurnwatchConfig(shards=4, stream_partitions=2, max_segments=3)
    first = replayed(redis_url, path, capped, "again")
    record = first.segment_record()
    before = labels(first, ChurnwatchConfig(shards=4, stream_partitions=2, key_prefix="again"))
    second = replayed(redis_url, path, capped, "again", workers=2)
    assert second.segment_record() == record
    assert labels(second, ChurnwatchConfig(shards=4, stream_partitions=2,
                                           key_prefix="again")) == before
    for store in (one, two, first, second):
        store.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_value_once_kept_or_refused_stays_so(kind: str, redis_url: str  # noqa: F811
                                               ) -> None:
    store: StateStore = MemoryStore(4) if kind == "memory" else RedisStore(
        redis_url, 4, "adm", max_wait=5)
    assert store.admit_segments(["b", "a"], 2).kept == ("b", "a")
    record = store.admit_segments(["c", "a", "d", "c"], 2)
    assert record.kept == ("b", "a")
    assert record.refused == ("c", "d") and record.refused_count == 2
    assert store.admit_segments(["c"], 10).kept == ("b", "a")  # refused stays refused
    assert config_with_segments(store, ChurnwatchConfig()).segments == (
        "b", "a", "other", "unassigned")
    store.close()


def test_max_segments_is_read_and_checked() -> None:
    config = parse_config({"segments": {"max_segments": 3, "skincare": {}}}, source="s.toml")
    assert config.max_segments == 3 and config.segments == ("skincare", "other", "unassigned")
    with pytest.raises(ConfigError, match=r"s.toml: segments.max_segments must be within"):
        parse_config({"segments": {"max_segments": -1}}, source="s.toml")
    # A configured segment is a label without taking a place among the discovered ones.
    assert config.with_discovered(["skincare", "fashion"]).discovered_segments == ("fashion",)
