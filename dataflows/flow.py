"""The churnwatch dataflow: source -> decode -> route by shard -> score -> Redis -> outputs.

Where things happen, for a newcomer:

- parsed:   ``_decode_batch`` calls ``churnwatch.core.event_batch.decode_lines`` (a read at once)
- scored:   ``ShardLogic.on_batch`` calls ``churnwatch.core.columnar.ColumnarShard``, which holds
            the shard's customers as columns in the worker
- stored:   ``ShardLogic`` commits through a ``churnwatch.state`` store, one transaction a batch
- exported: ``FlowHooks`` (metrics, the live summary) and the transition / dead-letter sinks

The stateful step is keyed by shard, not by customer: a batch of a shard's events costs one
read and one write round trip to Redis whatever its size.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, Source, StatelessSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from churnwatch.dataflows.messages import RawMessage
from churnwatch.dataflows.progress import SourceProgress
from churnwatch.dataflows.routing import key_worker, shard_keys
from churnwatch.state.base import (
    StateStore,
    admit_declared,
    config_with_segments,
    dead_letter_position,
    shard_of,
)

from churnwatch.core.columnar import ColumnarShard, EventColumns
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.engine import partition_id
from churnwatch.core.event_batch import EventBatch, decode_lines
from churnwatch.core.events import PROFILE, InvalidEvent
from churnwatch.core.records import BatchResult, FlowHooks, TierTransition

log = logging.getLogger("churnwatch.flow")
#: The live time rule (docs/operations.md, "One time rule"). A shard whose newest event is
#: this close to the wall clock is reading live traffic: once its partition is read to the end,
#: its silent customers follow the clock at once. Producers' clocks and the pipeline's delay
#: are seconds; a minute leaves room without taking history for live.
CURRENT_EVENT_SECONDS = 60.0
#: A partition read to its end whose events are older than that (history being published)
#: must also bring nothing new for this long before silent customers follow the clock: a
#: publisher feeding a running monitor never pauses that long between its writes (it writes
#: batches of a few thousand entries back to back), while the monitor may catch up with it
#: between two of them.
SETTLE_SECONDS = 5.0
#: While its partition is not caught up, a shard looks again this often.
CLOCK_CHECK_SECONDS = 1.0
#: Live: shards commit what they did at most this long after (a commit rewrites the
#: checkpoint of every bucket it touches: one a batch would cost most of the worker), and
#: always when Bytewax closes an epoch (:meth:`ShardLogic.snapshot`), before it records the
#: source positions of that epoch: a resume never starts past an uncommitted event.
COMMIT_SECONDS = 0.25


@dataclass(frozen=True)
class FlowSettings:
    """How a flow runs. Events are always judged in event time. ``clock="event"``: silent
    customers are due by event time only (replay, the simulator); ``clock="wall"``: also by the
    wall clock, once the source has caught up (live; ``progress``, ``current_seconds`` and
    ``settle_seconds``: see :meth:`ShardLogic.wall_clock`)."""

    config: ChurnwatchConfig
    store_factory: Callable[[], StateStore]
    clock: str = "event"
    hooks: FlowHooks = FlowHooks()
    transitions_path: str | None = None
    dead_letters_path: str | None = None
    # Set on a clean stop (SIGTERM, Ctrl-C): the flow's own sources (the shard ticks) end.
    stop: threading.Event | None = None
    # Where shards are scored (dataflows/routing.py): the cluster's worker count (every
    # process's workers) and the source's partition names in the publisher's order (partition
    # ``crc32(customer_id) % P`` at index ``P``), so each shard is scored by the worker that
    # reads its events. Without partitions, shards are dealt out evenly over the workers.
    workers: int = 1
    partitions: tuple[str, ...] | None = None
    # The source's reads (dataflows/progress.py), told by the sources of this process.
    progress: SourceProgress | None = None
    current_seconds: float = CURRENT_EVENT_SECONDS
    settle_seconds: float = SETTLE_SECONDS
    # How long what the shards did may wait to be committed together (and at most until the
    # epoch closes): live, a quarter of a second; a replay, which restarts from its files,
    # longer (the commit holds the source positions, so a crash redoes at most that much
    # work).
    commit_seconds: float = COMMIT_SECONDS


class FlowStore:
    """The store of one built flow in one process, and who closes it.

    :func:`build_flow` makes one per flow; the worker threads of the process share it (a Redis
    client is thread-safe, one connection pool for all). It is opened by the first step that
    needs it and closed when the last dead-letter sink partition of the process closes, which
    Bytewax does when the flow finishes; a flow run again opens a fresh one. No flow ever sees
    another flow's store.
    """

    def __init__(self, factory: Callable[[], StateStore]) -> None:
        self._factory = factory
        self._store: StateStore | None = None
        self._users = 0
        self._lock = threading.Lock()

    def get(self) -> StateStore:
        """The open store, opening it on first use."""
        with self._lock:
            if self._store is None:
                store = self._factory()
                store.claim_layout()
                self._store = store
            return self._store

    def acquire(self) -> StateStore:
        """Called by a sink partition when Bytewax builds it: the store stays open until every
        acquirer has released it."""
        with self._lock:
            self._users += 1
        return self.get()

    def release(self) -> None:
        """Called by a sink partition's ``close()``; the last one closes the store."""
        with self._lock:
            self._users -= 1
            store = self._store if self._users <= 0 else None
            if store is not None:
                self._store = None
        if store is not None:
            store.close()


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """One source read's valid events of one shard, as columns: what the decode step hands the
    shard's scoring step (one item per shard and read, so Bytewax's cost per item is paid per
    batch, not per event)."""

    shard: int
    events: EventColumns
    oldest_received_at: float


def _decode_batch(settings: FlowSettings, keys: Sequence[str], batch: list[RawMessage]
                  ) -> list[tuple[str, Any]]:
    """Decode a read of raw messages at once (:func:`decode_lines`): the valid events as one
    :class:`ShardBatch` per shard under the shard's key (``keys[shard]``), the invalid ones
    under the key ``"dead"`` with their source partition and offset (so each is dead-lettered
    once)."""
    if not batch:
        return []
    config = settings.config
    now = time.time()
    out: list[tuple[str, Any]] = []
    invalid: list[InvalidEvent] = []
    source = batch[0].source
    # A file's line is JSON Lines; a stream's payload may be msgpack.
    for msgpack_allowed in (False, True):
        raws = [r for r in batch if (r.source != "file") == msgpack_allowed]
        if not raws:
            continue
        decoded = decode_lines([r.payload for r in raws], [r.position for r in raws], now=now,
                               max_future_seconds=config.max_future_seconds,
                               max_amount=config.max_amount, msgpack_allowed=msgpack_allowed)
        valid = np.zeros(len(raws), dtype=bool)
        valid[decoded.index] = True
        for raw, bad in zip((r for r, ok in zip(raws, valid.tolist(), strict=True) if not ok),
                            decoded.invalid, strict=True):
            bad = replace(bad, partition=raw.partition, offset=raw.offset)
            invalid.append(bad)
            out.append(("dead", bad))
        out.extend(_shard_batches(config.shards, keys, raws, decoded))
    published = [r.published_at for r in batch if r.published_at is not None]
    settings.hooks.decoded(source, len(batch), invalid, max(published) if published else None)
    return out


def _shard_batches(shards: int, keys: Sequence[str], raws: Sequence[RawMessage],
                   decoded: EventBatch) -> list[tuple[str, ShardBatch]]:
    """The decoded valid events grouped by shard, each shard's in arrival order."""
    if not len(decoded):
        return []
    index = decoded.index.tolist()
    pids: dict[str, int] = {}
    partitions = np.array([pids.setdefault(raws[i].partition, partition_id(raws[i].partition))
                           for i in index], dtype=np.int64)
    offsets = np.array([raws[i].offset for i in index], dtype=np.int64)
    received = np.array([raws[i].received_at for i in index])
    shard = np.array([shard_of(cid, shards) for cid in decoded.customer_ids], dtype=np.int64)
    out = []
    for s in np.unique(shard).tolist():
        rows = np.nonzero(shard == s)[0]
        events = EventColumns.take(decoded, rows, partitions[rows], offsets[rows],
                                   [raws[index[r]].position for r in rows.tolist()])
        out.append((keys[s], ShardBatch(s, events, float(received[rows].min()))))
    return out


class ShardLogic(StatefulBatchLogic["ShardBatch | ShardTick", Any, None]):
    """Scores one shard. Bytewax builds one per shard on the worker that owns the shard; on
    resume it is rebuilt empty and reloads the shard from the store, which is the source of
    truth (the snapshot is ``None``: nothing to carry in Bytewax's recovery store).

    One time rule, live and replay: a batch is judged in event time (its customers, and the
    silent customers its events pass, are brought to the shard's watermark, whatever the
    clock). Live (``clock="wall"``), silent customers are then reviewed by the wall clock, but
    only while :meth:`wall_clock` says the shard's partition has caught up; the first time it
    does after a backlog or history, the shard does what ``replay --as-of`` does at that
    instant (:meth:`catch_up`). So history published into a running monitor ends in the state
    ``replay --as-of`` gives.
    """

    def __init__(self, shard: int, settings: FlowSettings, source: str, store: StateStore
                 ) -> None:
        self.shard = shard
        self.settings = settings
        self.source = source
        self.store = store
        self.engine = ColumnarShard(shard, config_with_segments(store, settings.config),
                                    self.store.load_shard(shard))
        self.store.load_table(shard, self.engine.table)
        self._next_due = self.engine.next_due()
        self._asked_segments: set[str] = set()
        # The live time rule's memory: when the shard last had events, and while it has yet to
        # catch up with its source (a fresh or resumed shard has), its watermark when it fell
        # behind.
        self._last_batch_at = time.time()
        self._behind_from: float | None = self.engine.state.watermark
        parts = settings.partitions
        self._partition = parts[shard % len(parts)] if parts else None
        # What the engine did since the last commit (committed together, at most every
        # ``settings.commit_seconds``, and at the end of the input).
        self._pending = BatchResult()
        self._pending_rows: list[np.ndarray] = []
        self._pending_oldest = math.inf
        self._pending_since: float | None = None
        self._committed_at = time.time()
        # What a commit made at an epoch's close (:meth:`snapshot`) sends downstream: at the
        # shard's next activation (at once: :meth:`notify_at`).
        self._committed_outputs: list[Any] = []

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        """Called by Bytewax with the shard's items of one activation, in arrival order:
        :class:`ShardBatch` items, and in wall-clock mode :class:`ShardTick` items."""
        values = [v for v in values if not isinstance(v, ShardTick)]
        if not values:  # only a tick: the shard exists on this worker
            self._next_due = self.engine.next_due()
            self._follow_wall_clock()
            return self._commit_if_due(), StatefulBatchLogic.RETAIN
        self._last_batch_at = time.time()
        batch = EventColumns.concat([v.events for v in values])
        oldest = min(v.oldest_received_at for v in values)
        # The shop's own segments: recorded before a customer is counted under one.
        self.engine.config = admit_declared(
            self.store, self.engine.config,
            (e.attributes.get("segment") for e in batch.extras.values() if e.type == PROFILE),
            self._asked_segments)
        # Event time, live as in replay: everyone touched, and every silent customer the
        # batch's events pass, is brought to the watermark.
        until = max(self.engine.state.watermark, float(batch.ts.max()))
        self._absorb(self.engine.process(batch, until), oldest)
        self._follow_wall_clock()
        return self._commit_if_due(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        """Called by Bytewax at :meth:`notify_at` (live mode): silent customers are due, or the
        shard looks again whether its source has caught up, or what it did since its last
        commit is due to be committed."""
        self._follow_wall_clock()
        self._next_due = self.engine.next_due()
        return self._commit_if_due(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        """The input has ended (a replay's files, a clean stop): commit what is pending."""
        return self._commit_if_due(force=True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """Wake up when what is pending is due to be committed; live, also when the earliest
        customer of the shard is due, or within :data:`CLOCK_CHECK_SECONDS` while the source
        has not caught up."""
        commit_at = (self._committed_at + self.settings.commit_seconds
                     if self._pending_since is not None else None)
        if self._committed_outputs:
            commit_at = time.time()  # a commit at the epoch's close left outputs to send
        review_at = None
        if self.settings.clock == "wall" and self._next_due is not None:
            now = time.time()
            review_at = max(self._next_due, now)
            if self._behind_from is not None and self._next_due <= now:
                review_at = now + CLOCK_CHECK_SECONDS
        times = [t for t in (commit_at, review_at) if t is not None]
        return datetime.fromtimestamp(min(times), tz=timezone.utc) if times else None

    def snapshot(self) -> None:
        """Called by Bytewax when an epoch closes, before it records the epoch's source
        positions: what is pending is committed now (a resume from that record must find
        every event it passes committed); what that commit sends downstream goes at the next
        activation. The snapshot itself is ``None``: the store holds the shard."""
        self._committed_outputs += self._commit_if_due(force=True)
        return None

    def wall_clock(self) -> float | None:
        """The wall clock when silent customers may be judged by it; ``None`` in event-clock
        mode, and while the shard's partition has not caught up.

        Caught up: the partition's last read reached the end of the stream, and either the
        shard's newest event is within ``current_seconds`` of the clock (live traffic) or no
        read has brought entries for ``settle_seconds`` (history, published in one go). A
        partition this process does not read (the routing model was wrong) is judged by the
        shard's own batches: current, or none for ``settle_seconds``."""
        if self.settings.clock != "wall":
            return None
        now = time.time()
        settle = self.settings.settle_seconds
        current = now - self.engine.state.watermark <= self.settings.current_seconds
        caught_up = None
        if self.settings.progress is not None and self._partition is not None:
            caught_up = self.settings.progress.caught_up(self._partition, settle, now, current)
        if caught_up is None:
            caught_up = current or now - self._last_batch_at >= settle
        if not caught_up:
            if self._behind_from is None:
                self._behind_from = self.engine.state.watermark
            return None
        return now

    def _follow_wall_clock(self) -> None:
        """Live: review the silent customers due by the wall clock, if the source has caught
        up. Caught up after more than ``current_seconds`` of event time (a backlog, history)
        or with a newest event older than that (a restart on a quiet or replayed shop), the
        shard first does what ``replay --as-of`` does: :meth:`catch_up`. A shard behind for a
        moment of live traffic (a full read) just goes on."""
        now = self.wall_clock()
        if now is None:
            return
        if self._behind_from is not None:
            fell_behind_at, self._behind_from = self._behind_from, None
            mark, current = self.engine.state.watermark, self.settings.current_seconds
            if now - mark > current or mark - fell_behind_at > current:
                self.catch_up(now)
                return
        self._review_due(now)

    def catch_up(self, now: float) -> None:
        """The shard has caught up with a backlog or history: do what ``replay --as-of now``
        does (:func:`advance_all`): refit with every order so far, review the silent customers
        due by ``now``, and re-score everyone under a new model. The watermark joins the
        clock."""
        engine = self.engine
        refitted = engine.refit_at(now)
        if now > engine.state.watermark:
            engine.state.watermark = now
        self._review_due(now)
        if refitted:
            self._absorb(engine.rescore(now), time.time())
        # The watermark (and the refit) are held even when no customer changed.
        self._absorb(BatchResult(), time.time())

    def _review_due(self, now: float) -> None:
        """Re-score the shard's customers whose review time is at or before ``now`` (a
        customer held by hysteresis is pushed a minute on, so a review does not repeat)."""
        if self._next_due is None or self._next_due > now:
            return
        self._absorb(self.engine.review(now), time.time())

    def _absorb(self, result: BatchResult, oldest_received_at: float) -> None:
        """Add what one call to the engine did (its rows are ``engine.changed_rows``) to what
        waits for the next commit."""
        pending = self._pending
        pending.transitions.extend(result.transitions)
        pending.drops.extend(result.drops)
        pending.dead_letters.extend(result.dead_letters)
        pending.scored += result.scored
        pending.duplicates += result.duplicates
        pending.late += result.late
        pending.rescored_silent += result.rescored_silent
        pending.last_event_ts = max(pending.last_event_ts, result.last_event_ts)
        self._pending_rows.append(self.engine.changed_rows)
        self.engine.changed_rows = np.zeros(0, dtype=np.int64)
        self._pending_oldest = min(self._pending_oldest, oldest_received_at)
        if self._pending_since is None:
            self._pending_since = time.time()
        self._next_due = self.engine.next_due()

    def _commit_if_due(self, force: bool = False) -> list[Any]:
        """Commit what is pending once :attr:`FlowSettings.commit_seconds` have passed since the
        last commit (or ``force``); returns the outputs of what was committed (transitions and
        dead letters go downstream only once they are committed), with those of a commit made
        at an epoch's close."""
        waiting, self._committed_outputs = self._committed_outputs, []
        if self._pending_since is None:
            return waiting
        if not force and time.time() - self._committed_at < self.settings.commit_seconds:
            return waiting
        result = self._pending
        rows = np.unique(np.concatenate(self._pending_rows))
        oldest = self._pending_oldest
        self._pending, self._pending_rows = BatchResult(), []
        self._pending_oldest, self._pending_since = math.inf, None
        self._commit(result, rows, oldest)
        self._committed_at = time.time()
        return waiting + self._outputs(result)

    def _commit(self, result: BatchResult, rows: np.ndarray, oldest_received_at: float
                ) -> None:
        if result.dead_letters:
            # Before the commit: once the commit holds the customers' offsets, a replay of the
            # batch takes these events for duplicates and would never find them again.
            records = [dead_letter_record(d) for d in result.dead_letters]
            written = self.store.add_dead_letters(records)
            new = [d for d, w in zip(result.dead_letters, written, strict=True) if w]
            if new:
                self.settings.hooks.dead_lettered(self.source, new)
        layout = self.store.layout
        self.engine.remember(result.transitions, layout.history_kept, layout.history_days)
        self.store.commit_rows(self.shard, self.engine.state, self.engine.table, rows,
                               result.transitions)
        self._next_due = self.engine.next_due()
        self.settings.hooks.committed(self.source, result, oldest_received_at)
        if result.transitions:
            self.settings.hooks.transitions(result.transitions)

    def _outputs(self, result: BatchResult) -> list[Any]:
        out: list[Any] = list(result.transitions)
        out.extend(result.dead_letters)
        return out


def build_flow(settings: FlowSettings, source: Source[RawMessage], source_name: str = "file",
               flow_id: str = "churnwatch") -> Dataflow:
    """The whole dataflow around ``source``."""
    flow = Dataflow(flow_id)
    keys = shard_keys(settings.config.shards, settings.workers, settings.partitions)
    raw = op.input("input", flow, source)
    decoded = op.flat_map_batch("decode", raw, lambda batch: _decode_batch(settings, keys, batch))
    split = op.branch("split_dead", decoded, lambda kv: kv[0] != "dead")
    keyed = split.trues
    if settings.clock == "wall":
        # Every shard hears from the clock, so its silent customers are reviewed after a
        # restart even if no event of the shard ever arrives again.
        ticks = op.input("shard_ticks", flow, ShardTickSource(settings.config.shards,
                                                             stop=settings.stop, keys=keys))
        keyed = op.merge("events_and_ticks", keyed, ticks)
    store = FlowStore(settings.store_factory)
    scored = op.stateful_batch(
        "score", keyed,
        lambda resume: _LazyShardLogic(settings, source_name, store))
    outputs = op.map("unkey", scored, lambda kv: kv[1])
    dead = op.merge("dead_letters", op.map("dead_values", split.falses, lambda kv: kv[1]),
                    op.filter("late_dead", outputs, lambda x: isinstance(x, InvalidEvent)))
    op.output("dead_letter_sink", dead, DeadLetterSink(settings, source_name, store))
    transitions = op.filter("transitions", outputs, lambda x: isinstance(x, TierTransition))
    if settings.transitions_path:
        op.output("transition_sink", transitions, JsonLinesSink(settings.transitions_path))
    return flow


@dataclass(frozen=True)
class ShardTick:
    """A wake-up for one shard from :class:`ShardTickSource`."""

    shard: int


class ShardTickSource(DynamicSource[tuple[str, ShardTick]]):
    """Every ``interval`` seconds, one tick per shard, under the shard's key as its events
    (``keys``, default the shard numbers), each from the worker the key routes to (so no tick
    crosses workers; were the routing model wrong, Bytewax would still deliver every tick to its
    shard); ends once ``stop`` is set, as the event sources do, so a clean stop reaches the
    flow's end."""

    def __init__(self, shards: int, interval: float = 30.0,
                 stop: threading.Event | None = None, keys: Sequence[str] | None = None
                 ) -> None:
        self.shards = shards
        self.interval = interval
        self.stop = stop
        self.keys = list(keys) if keys is not None else [str(s) for s in range(shards)]

    def build(self, step_id: str, worker_index: int, worker_count: int
              ) -> StatelessSourcePartition[tuple[str, ShardTick]]:
        """Called by Bytewax once per worker: it ticks the shards it scores."""
        mine = [(shard, key) for shard, key in enumerate(self.keys)
                if key_worker(key, worker_count) == worker_index]
        return _TickPartition(mine, self.interval, self.stop)


class _TickPartition(StatelessSourcePartition[tuple[str, ShardTick]]):
    def __init__(self, keys: list[tuple[int, str]], interval: float,
                 stop: threading.Event | None) -> None:
        self.keys = keys
        self.interval = timedelta(seconds=interval)
        self.next = datetime.now(timezone.utc)
        self.stop = stop

    def next_batch(self) -> list[tuple[str, ShardTick]]:
        if self.stop is not None and self.stop.is_set():
            raise StopIteration
        now = datetime.now(timezone.utc)
        if not self.keys or now < self.next:
            return []
        self.next = now + self.interval
        return [(key, ShardTick(shard)) for shard, key in self.keys]

    def next_awake(self) -> datetime | None:
        # Wake at least every second even with nothing to say: a source that sleeps long holds
        # back the epochs of the whole flow (events would wait for the next tick).
        return min(self.next, datetime.now(timezone.utc) + timedelta(seconds=1))


class _LazyShardLogic(StatefulBatchLogic["ShardBatch | ShardTick", Any, None]):
    """Defers building :class:`ShardLogic` until the first item names the shard: Bytewax calls
    the builder with the resume state only, not the key."""

    def __init__(self, settings: FlowSettings, source_name: str, store: FlowStore) -> None:
        self.settings = settings
        self.source_name = source_name
        self.store = store
        self.inner: ShardLogic | None = None

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        if self.inner is None:
            shard = values[0].shard  # a ShardTick or a ShardBatch
            self.inner = ShardLogic(shard, self.settings, self.source_name, self.store.get())
        return self.inner.on_batch(values)

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        if self.inner is None:
            return (), StatefulBatchLogic.RETAIN
        return self.inner.on_notify()

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self.inner is None:
            return (), StatefulBatchLogic.RETAIN
        return self.inner.on_eof()

    def notify_at(self) -> datetime | None:
        return None if self.inner is None else self.inner.notify_at()

    def snapshot(self) -> None:
        return None if self.inner is None else self.inner.snapshot()


class DeadLetterSink(DynamicSink[InvalidEvent]):
    """Dead letters go to the store's dead-letter stream (and a JSONL file when configured),
    each source position once.

    The store keeps, per source partition, the highest offset dead-lettered, checked and
    advanced in the write itself, and tells which records are new: only those are counted
    (:meth:`FlowHooks.dead_lettered`). The file keeps its own high-water marks, read back from
    the file(s) when Bytewax builds the partition, so a dead letter the store took just before a
    crash still reaches the file after the resume, and one the file has is not repeated.
    ``too_late`` dead letters are written to the store by their shard before its commit; they
    pass through here for the file only (the store answers that they are not new).
    """

    def __init__(self, settings: FlowSettings, source_name: str, store: FlowStore) -> None:
        self.settings = settings
        self.source_name = source_name
        self.store = store

    def build(self, step_id: str, worker_index: int, worker_count: int
              ) -> StatelessSinkPartition[InvalidEvent]:
        """Called by Bytewax once per worker, at start and on resume."""
        path = self.settings.dead_letters_path
        if path and worker_count > 1:
            path = f"{path}.{worker_index}"
        return _DeadLetterPartition(self.settings, self.source_name, self.store, path)


class _DeadLetterPartition(StatelessSinkPartition[InvalidEvent]):
    def __init__(self, settings: FlowSettings, source_name: str, store: FlowStore,
                 path: str | None) -> None:
        self.settings = settings
        self.source_name = source_name
        self.owner = store
        self.store = store.acquire()
        self.file_offsets: dict[str, int] = {}
        self.file = None
        if path:
            # Every worker's file: a partition may have been another worker's before a resume.
            base = Path(settings.dead_letters_path or path)
            siblings = [p for p in base.parent.glob(base.name + ".*")
                        if p.name[len(base.name) + 1:].isdigit()]
            self.file_offsets = written_dead_letter_offsets([base, *siblings])
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write_batch(self, items: list[InvalidEvent]) -> None:
        """Called by Bytewax with the dead letters of this worker, in arrival order."""
        records = [dead_letter_record(i) for i in items]
        written = self.store.add_dead_letters(records)
        new = [item for item, w in zip(items, written, strict=True) if w]
        if new:
            self.settings.hooks.dead_lettered(self.source_name, new)
        if self.file:
            offsets = self.file_offsets
            for record in records:
                lane, offset = dead_letter_position(record)
                if lane:
                    if offset <= offsets.get(lane, -1):
                        continue
                    offsets[lane] = offset
                self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        """Called by Bytewax when the flow finishes on this worker."""
        if self.file:
            self.file.close()
        self.owner.release()


def written_dead_letter_offsets(paths: Iterable[Path]) -> dict[str, int]:
    """Per source partition, the highest offset among the dead-letter records in ``paths``
    (missing files and unreadable lines are skipped: a line cut short by a crash is ignored)."""
    offsets: dict[str, int] = {}
    for path in paths:
        try:
            handle = path.open("rb")
        except OSError:
            continue
        with handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    lane, offset = dead_letter_position(record)
                    if lane and offset > offsets.get(lane, -1):
                        offsets[lane] = offset
    return offsets


def dead_letter_record(item: InvalidEvent) -> dict[str, object]:
    """A dead letter as plain data: the reason, where it came from, and the payload's exact
    bytes: as text when they are UTF-8 (``payload_encoding`` ``utf-8``), else in base64
    (``payload_encoding`` ``base64``). ``partition`` and ``offset`` are the replayable position
    that makes writing it exactly-once (see :meth:`StateStore.add_dead_letters`)."""
    try:
        payload, encoding = item.payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(item.payload).decode("ascii"), "base64"
    return {"reason": item.reason, "detail": item.detail, "position": item.position,
            "payload": payload, "payload_encoding": encoding,
            "customer_id": item.customer_id, "partition": item.partition,
            "offset": item.offset}


class JsonLinesSink(DynamicSink[TierTransition]):
    """Appends transition records to a JSON Lines file (one file per worker)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int
              ) -> StatelessSinkPartition[TierTransition]:
        """Called by Bytewax once per worker."""
        path = self.path if worker_count == 1 else f"{self.path}.{worker_index}"
        return _JsonLinesPartition(Path(path))


class _JsonLinesPartition(StatelessSinkPartition[TierTransition]):
    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write_batch(self, items: list[TierTransition]) -> None:
        for item in items:
            self.file.write(json.dumps(item.as_dict()) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def advance_all(store: StateStore, config: ChurnwatchConfig, now: float,
                hooks: FlowHooks | None = None) -> list[TierTransition]:
    """Bring every shard's silent customers to ``now`` (``replay --as-of``): what a live
    shard does when it has caught up (:meth:`ShardLogic.catch_up`), shard by shard, each
    loaded whole and committed once: refit with every order so far, review the customers due
    by ``now``, and re-score everyone under a new model."""
    out: list[TierTransition] = []
    config = config_with_segments(store, config)
    layout = store.layout
    for shard in range(config.shards):
        engine = ColumnarShard(shard, config, store.load_shard(shard))
        store.load_table(shard, engine.table)
        refitted = engine.refit_at(now)
        if not len(engine.table) and not refitted:
            continue  # nobody in the shard: nothing to bring forward
        if now > engine.state.watermark:
            engine.state.watermark = now
        result = engine.review(now)
        rows = [engine.changed_rows]
        if refitted:
            transitions = result.transitions
            result = engine.rescore(now)
            result.transitions[:0] = transitions
            rows.append(engine.changed_rows)
        engine.remember(result.transitions, layout.history_kept, layout.history_days)
        store.commit_rows(shard, engine.state, engine.table, np.unique(np.concatenate(rows)),
                          result.transitions)
        out.extend(result.transitions)
        if hooks and result.transitions:
            hooks.transitions(result.transitions)
    return out
