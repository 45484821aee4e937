"""Where a Bytewax cluster scores each shard: the models of Bytewax's routing in
dataflows/routing.py against a real cluster, and the flow scoring every shard on the worker
that reads the shard's stream (so no event crosses workers, and the shards split evenly)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main
from churnwatch.dataflows.flow import FlowSettings, ShardTickSource, build_flow
from churnwatch.dataflows.redis_source import (
    RedisStreamPartition,
    RedisStreamSource,
    stream_names,
)
from churnwatch.dataflows.routing import key_worker, partition_workers, shard_keys
from churnwatch.state.redis_store import RedisStore
from hypothesis import given, settings
from hypothesis import strategies as st
from live_servers import LiveRedis, live_redis  # noqa: F401

from bench.workload import write_jsonl
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.publish import Publisher, read_lines


class _Thread:
    """Which thread (worker) did what, recorded from inside a real Bytewax run."""

    def __init__(self) -> None:
        self.worker_of_thread: dict[int, int] = {}
        self.partition_thread: dict[str, int] = {}
        self.key_thread: dict[str, int] = {}
        self.lock = threading.Lock()

    def worker(self, thread: int) -> int:
        return self.worker_of_thread[thread]


class _Part(StatefulSourcePartition[str, None]):
    def __init__(self, name: str, keys: list[str], seen: _Thread) -> None:
        self.name, self.keys, self.seen, self.done = name, keys, seen, False

    def next_batch(self) -> list[str]:
        if self.done:
            raise StopIteration
        self.done = True
        with self.seen.lock:
            self.seen.partition_thread[self.name] = threading.get_ident()
        return self.keys

    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource[str, None]):
    def __init__(self, parts: list[str], keys: list[str], seen: _Thread) -> None:
        self.parts, self.keys, self.seen = parts, keys, seen

    def list_parts(self) -> list[str]:
        return self.parts

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        return _Part(for_part, self.keys if for_part == self.parts[0] else [], self.seen)


class _Record(StatefulBatchLogic[str, None, None]):
    def __init__(self, seen: _Thread) -> None:
        self.seen = seen

    def on_batch(self, values: list[str]) -> tuple[list[None], bool]:
        with self.seen.lock:
            for key in values:
                self.seen.key_thread[key] = threading.get_ident()
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> None:
        return None


class _WorkerSink(DynamicSink[Any]):
    """Learns each worker thread's index: Bytewax builds a sink partition on every worker."""

    def __init__(self, seen: _Thread) -> None:
        self.seen = seen

    def build(self, step_id: str, worker_index: int, worker_count: int
              ) -> StatelessSinkPartition[Any]:
        with self.seen.lock:
            self.seen.worker_of_thread[threading.get_ident()] = worker_index
        return _NoSink()


class _NoSink(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


def _route(parts: list[str], keys: list[str], workers: int) -> _Thread:
    seen = _Thread()
    flow = Dataflow("routing")
    read = op.input("in", flow, _Source(parts, keys, seen))
    routed = op.stateful_batch("by_key", op.map("key", read, lambda k: (k, k)),
                               lambda resume: _Record(seen))
    op.output("out", routed, _WorkerSink(seen))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return seen


@pytest.mark.parametrize(("workers", "partitions"), [(2, 4), (3, 4), (2, 24), (3, 12), (4, 16)])
def test_the_routing_models_match_where_bytewax_sends_partitions_and_keys(
        workers: int, partitions: int) -> None:
    parts = stream_names("churnwatch:events", partitions)
    keys = [str(n) for n in range(40)] + shard_keys(16, workers, parts) + ["dead", "c-\u00e9~7"]
    seen = _route(parts, keys, workers)
    assert {p: seen.worker(t) for p, t in seen.partition_thread.items()} == \
        partition_workers(parts, workers)
    assert {k: seen.worker(t) for k, t in seen.key_thread.items()} == \
        {k: key_worker(k, workers) for k in keys}


@settings(max_examples=40, deadline=None)
@given(shards_per_partition=st.integers(1, 8), partitions=st.integers(1, 12),
       workers=st.integers(1, 9))
def test_every_shard_key_goes_to_the_worker_reading_its_partition(
        shards_per_partition: int, partitions: int, workers: int) -> None:
    shards = shards_per_partition * partitions
    parts = [f"{n}-orders" for n in range(partitions)]
    keys = shard_keys(shards, workers, parts)
    owners = partition_workers(parts, workers)
    assert len(set(keys)) == shards
    assert all(k.split("~")[0] == str(s) for s, k in enumerate(keys))
    assert [key_worker(k, workers) for k in keys] == \
        [owners[parts[s % partitions]] for s in range(shards)]


def test_without_partitions_the_shards_are_dealt_out_evenly() -> None:
    keys = shard_keys(16, 3)
    assert Counter(key_worker(k, 3) for k in keys) == {0: 6, 1: 5, 2: 5}
    assert shard_keys(5, 1) == ["0", "1", "2", "3", "4"]


def test_each_worker_ticks_the_shards_it_scores_and_every_shard_is_ticked_once() -> None:
    parts = stream_names("churnwatch:events", 4)
    keys = shard_keys(16, 3, parts)
    source = ShardTickSource(16, keys=keys)
    ticked = {w: source.build("shard_ticks", w, 3).next_batch() for w in range(3)}
    assert sorted(tick.shard for batch in ticked.values() for _, tick in batch) == \
        list(range(16))
    for worker, batch in ticked.items():
        assert batch
        assert all(key == keys[tick.shard] and key_worker(key, 3) == worker
                   for key, tick in batch)


class _SeenStore(RedisStore):
    """The real store, noting which thread commits each shard."""

    def __init__(self, seen: dict[int, set[int]], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen = seen

    def commit_rows(self, shard: int, *args: Any, **kwargs: Any) -> None:
        self.seen.setdefault(shard, set()).add(threading.get_ident())
        super().commit_rows(shard, *args, **kwargs)


class _SeenSource(RedisStreamSource):
    """The real stream source, noting which thread reads each stream."""

    def __init__(self, readers: dict[str, int], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.readers = readers

    def build_part(self, step_id: str, for_part: str, resume_state: str | None
                   ) -> RedisStreamPartition:
        self.readers[for_part] = threading.get_ident()
        return super().build_part(step_id, for_part, resume_state)


def _run_cluster(server: LiveRedis, config: ChurnwatchConfig, workers: int,
                 partitions: Sequence[str] | None, keyed_for: int | None = None
                 ) -> tuple[dict[int, set[int]], dict[str, int]]:
    """Run the flow on ``workers`` worker threads, its keys chosen for ``keyed_for`` workers
    (default: ``workers``)."""
    committers: dict[int, set[int]] = {}
    readers: dict[str, int] = {}
    streams = stream_names(config.stream_prefix, config.stream_partitions)
    settings = FlowSettings(
        config, lambda: _SeenStore(committers, server.url, config.shards, config.key_prefix),
        clock="event", workers=workers if keyed_for is None else keyed_for,
        partitions=tuple(partitions) if partitions is not None else None)
    source = _SeenSource(readers, server.url, streams, batch_size=config.batch_size,
                         stop_at_end=True)
    cluster_main(build_flow(settings, source, "redis"), [], 0, worker_count_per_proc=workers)
    return committers, readers


def test_a_two_worker_cluster_scores_each_shard_where_its_stream_is_read(
        live_redis: LiveRedis, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", 3000, 400, seed=5)
    config = ChurnwatchConfig(shards=16, stream_partitions=4, key_prefix="rt", batch_size=300)
    Publisher(live_redis.url, config, pipeline_size=500).publish(read_lines([str(path)]))
    streams = stream_names(config.stream_prefix, config.stream_partitions)

    committers, readers = _run_cluster(live_redis, config, 2, streams)
    assert sorted(committers) == list(range(16))
    assert all(len(threads) == 1 for threads in committers.values())
    for shard, threads in committers.items():
        assert threads == {readers[streams[shard % 4]]}, f"shard {shard}"
    assert Counter(next(iter(t)) for t in committers.values()).most_common()[0][1] == 8

    # The same flow keyed by bare shard numbers (keys chosen for one worker, as before)
    # scores some shards away from their stream, unevenly: what the test above rules out.
    old_config = ChurnwatchConfig(shards=16, stream_partitions=4, key_prefix="rt0",
                                  batch_size=300)
    old, old_readers = _run_cluster(live_redis, old_config, 2, None, keyed_for=1)
    away = [s for s, t in old.items() if t != {old_readers[streams[s % 4]]}]
    assert away


def test_a_cluster_keyed_for_locality_ends_in_the_state_of_one_worker(
        live_redis: LiveRedis, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", 3000, 400, seed=6)
    published = ChurnwatchConfig(shards=16, stream_partitions=4, stream_prefix="same:events")
    Publisher(live_redis.url, published, pipeline_size=500).publish(read_lines([str(path)]))
    customers, shards = [], []
    for workers, prefix in ((1, "one"), (2, "two"), (3, "three")):
        config = ChurnwatchConfig(shards=16, stream_partitions=4, key_prefix=prefix,
                                  stream_prefix="same:events", batch_size=300)
        _run_cluster(live_redis, config, workers, stream_names(config.stream_prefix, 4))
        store = RedisStore(live_redis.url, config.shards, prefix)
        customers.append({cid: s.to_wire() for cid, s in store.iter_customers()})
        shards.append([store.load_shard(s).to_wire() for s in range(16)])
    assert len(customers[0]) > 300
    assert customers[0] == customers[1] == customers[2]
    assert shards[0] == shards[1] == shards[2]
