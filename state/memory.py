"""An in-process state store with the same contract as Redis, for tests and experiments.

It keeps customers as Redis does, as bucket checkpoints named like the Redis store's keys
(:meth:`MemoryStore.buckets`), with the same history and stream retention
(:class:`~churnwatch.state.base.StoreLayout`), so a test can check both hold the same bytes.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence

import msgpack
import numpy as np
from churnwatch.state.base import (
    REFUSED_KEPT,
    SegmentRecord,
    StoreLayout,
    UrgencySelection,
    bucket_of,
    dead_letter_position,
    history_records,
    merge_ranked,
    remember_transitions,
    segment_key_part,
    shard_of,
    urgency_ranges,
    urgency_score,
    urgency_scores,
    value_tiers_of,
)
from churnwatch.state.checkpoint import (
    BucketRows,
    decode_rows,
    decode_states,
    encode_rows,
    with_states,
)

from churnwatch.core.columns import CustomerTable, to_states
from churnwatch.core.customer import CustomerState
from churnwatch.core.records import ShardState, TierTransition


class MemoryStore:
    """Keeps everything in dictionaries; customers are kept as the same checkpoints as in
    Redis, so both stores behave the same."""

    def __init__(self, shards: int, layout: StoreLayout | None = None, prefix: str = "cw"
                 ) -> None:
        self.shards = shards
        self.layout = layout or StoreLayout()
        self.prefix = prefix
        # Bucket key (as Redis names it) -> its checkpoint, and how many customers it holds.
        self._buckets: dict[str, bytes] = {}
        self._counts: dict[str, int] = {}
        self._bucket_rows: dict[int, BucketRows] = {}
        self._shards: dict[int, bytes] = {}
        self._positions: dict[int, dict[int, int]] = {}
        self._due: dict[int, dict[str, float]] = defaultdict(dict)
        # Per shard: (wall time written, record), as the Redis store's streams retain them.
        self._transitions: dict[int, deque[tuple[float, dict[str, object]]]] = defaultdict(
            lambda: deque(maxlen=self.layout.transitions_per_shard(shards)))
        self._dead: deque[tuple[float, dict[str, object]]] = deque(
            maxlen=self.layout.dead_letters_kept)
        self._dead_offsets: dict[str, int] = {}
        # The urgency index: (shard, declared segment) -> customer -> index score.
        self._urgency: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
        # The shop's discovered segments: kept in order, refused (a few), refused in all.
        self._kept_segments: list[str] = []
        self._refused_segments: set[str] = set()
        self._refused_count = 0

    def bucket_key(self, customer_id: str) -> str:
        """The name the Redis store gives the checkpoint holding this customer."""
        shard = shard_of(customer_id, self.shards)
        return (f"{self.prefix}:{{s{shard}}}:k:"
                f"{bucket_of(customer_id, self.shards, self.layout.buckets)}")

    def buckets(self) -> dict[str, bytes]:
        """Every customer bucket as Redis would hold it: key -> checkpoint."""
        return dict(self._buckets)

    def _put(self, key: str, table: CustomerTable, rows: np.ndarray) -> None:
        self._buckets[key] = encode_rows(table, rows)
        self._counts[key] = len(rows)

    def load_shard(self, shard: int) -> ShardState:
        raw = self._shards.get(shard)
        state = ShardState.from_wire(msgpack.unpackb(raw, strict_map_key=False) if raw else None)
        state.positions = dict(self._positions.get(shard, {}))
        return state

    def load_customers(self, shard: int, customer_ids: Sequence[str]
                       ) -> dict[str, CustomerState | None]:
        table = CustomerTable()
        for key in dict.fromkeys(self.bucket_key(cid) for cid in customer_ids):
            if key in self._buckets:
                decode_rows(self._buckets[key], table)
        rows = [table.row(cid) for cid in customer_ids]
        states = iter(to_states(table, [r for r in rows if r is not None]))
        return {cid: None if r is None else next(states)
                for cid, r in zip(customer_ids, rows, strict=True)}

    def load_table(self, shard: int, table: CustomerTable) -> None:
        tag = f"{self.prefix}:{{s{shard}}}:k:"
        for key, blob in self._buckets.items():
            if key.startswith(tag):
                decode_rows(blob, table)

    def due_customers(self, shard: int, until: float, limit: int) -> list[str]:
        due = sorted((t, c) for c, t in self._due[shard].items() if t <= until)
        return [c for _, c in due[:limit]]

    def next_due(self, shard: int) -> float | None:
        times = self._due[shard].values()
        return min(times) if times else None

    def commit(self, shard: int, shard_state: ShardState, changed: Mapping[str, CustomerState],
               transitions: Sequence[TierTransition]) -> None:
        remember_transitions(changed, transitions, self.layout.history_kept,
                             self.layout.history_days)
        by_bucket: dict[str, list[str]] = {}
        for cid, state in changed.items():
            self._index(shard, cid, segment_key_part(state.segment), urgency_score(state))
            by_bucket.setdefault(self.bucket_key(cid), []).append(cid)
        for key, ids in by_bucket.items():
            self._buckets[key], self._counts[key] = with_states(
                self._buckets.get(key), ((cid, changed[cid]) for cid in ids))
        self._finish(shard, shard_state,
                     {cid: state.next_review_at for cid, state in changed.items()}, transitions)

    def commit_rows(self, shard: int, shard_state: ShardState, table: CustomerTable,
                    rows: np.ndarray, transitions: Sequence[TierTransition]) -> None:
        groups = self._bucket_rows.setdefault(
            shard, BucketRows(self.shards, self.layout.buckets)).groups(table, rows)
        for bucket, members in groups:
            self._put(f"{self.prefix}:{{s{shard}}}:k:{bucket}", table, members)
        ids = [table.ids[r] for r in rows.tolist()]
        scores = urgency_scores(table, rows).tolist()
        codes = table.columns["segment"][rows].tolist()
        for cid, code, score in zip(ids, codes, scores, strict=True):
            self._index(shard, cid, segment_key_part(table.label(code)),
                        None if score != score else score)
        reviews = table.columns["next_review_at"][rows].tolist()
        self._finish(shard, shard_state, {cid: None if at != at else at
                                          for cid, at in zip(ids, reviews, strict=True)},
                     transitions)

    def _finish(self, shard: int, shard_state: ShardState, due: Mapping[str, float | None],
                transitions: Sequence[TierTransition]) -> None:
        for cid, at in due.items():
            if at is None:
                self._due[shard].pop(cid, None)
            else:
                self._due[shard][cid] = float(at)
        self._shards[shard] = msgpack.packb(shard_state.to_wire())
        self._positions[shard] = dict(shard_state.positions)
        now = time.time()
        stream = self._transitions[shard]
        for transition in transitions:
            stream.append((now, transition.as_dict()))
        _drop_older(stream, now - self.layout.transitions_max_age
                    if self.layout.transitions_max_age > 0 else None)

    def _index(self, shard: int, cid: str, segment: str, score: float | None) -> None:
        for (at, _), members in self._urgency.items():
            if at == shard:
                members.pop(cid, None)
        if score is not None:
            self._urgency[(shard, segment)][cid] = score

    def urgency_page(self, selection: UrgencySelection, offset: int, limit: int
                     ) -> tuple[list[tuple[str, CustomerState]], int]:
        wanted = offset + limit
        total = 0
        ranges: list[tuple[int, list[tuple[str, float]]]] = []
        for (_, segment), members in self._urgency.items():
            if selection.segment_filter is not None and not selection.segment_filter(
                    segment or None):
                continue
            for tier in selection.tiers:
                for value in value_tiers_of(selection.value_tier):
                    low, high = urgency_ranges(tier, value)
                    inside = sorted(((s, m) for m, s in members.items() if low <= s <= high))
                    total += len(inside)
                    ranges.append((tier, [(m, s) for s, m in inside[:wanted]]))
        ids = merge_ranked(ranges, wanted)[offset:]
        return [(cid, state) for cid in ids
                if (state := self.customer(cid)) is not None], total

    def admit_segments(self, values: Sequence[str], cap: int) -> SegmentRecord:
        for value in values:
            if value in self._kept_segments or value in self._refused_segments:
                continue
            if len(self._kept_segments) < cap:
                self._kept_segments.append(value)
            else:
                self._refused_count += 1
                if len(self._refused_segments) < REFUSED_KEPT:
                    self._refused_segments.add(value)
        return self.segment_record()

    def segment_record(self) -> SegmentRecord:
        return SegmentRecord(tuple(self._kept_segments), tuple(sorted(self._refused_segments)),
                             self._refused_count)

    def customer(self, customer_id: str) -> CustomerState | None:
        return self.load_customers(shard_of(customer_id, self.shards), [customer_id])[
            customer_id]

    def iter_customers(self) -> Iterator[tuple[str, CustomerState]]:
        yield from decode_states(list(self._buckets.values()))

    def shard_customers(self, shard: int) -> Iterator[tuple[str, CustomerState]]:
        for cid, state in self.iter_customers():
            if shard_of(cid, self.shards) == shard:
                yield cid, state

    def shard_states(self) -> list[ShardState]:
        return [self.load_shard(s) for s in sorted(self._shards)]

    def recent_transitions(self, count: int) -> list[dict[str, object]]:
        # Shard by shard, each newest first, then by time: ties in the order Redis gives them.
        items = [record for _, stream in sorted(self._transitions.items())
                 for _, record in reversed(list(stream)[-count:])] if count else []
        return sorted(items, key=lambda t: -float(t["at"]))[:count]  # type: ignore[arg-type]

    def customer_transitions(self, customer_id: str, count: int) -> list[dict[str, object]]:
        stream = self._transitions[shard_of(customer_id, self.shards)]
        return history_records(customer_id, self.customer(customer_id), count,
                               (record for _, record in reversed(stream)))

    def add_dead_letters(self, records: Sequence[Mapping[str, object]]) -> list[bool]:
        written: list[bool] = []
        for record in records:
            lane, offset = dead_letter_position(record)
            if lane:
                if offset <= self._dead_offsets.get(lane, -1):
                    written.append(False)
                    continue
                self._dead_offsets[lane] = offset
            self._dead.append((time.time(), dict(record)))
            written.append(True)
        max_age = self.layout.dead_letters_max_age
        _drop_older(self._dead, time.time() - max_age if max_age > 0 else None)
        return written

    def dead_letters(self, count: int) -> list[dict[str, object]]:
        return [record for _, record in reversed(self._dead)][:count]

    def customer_count(self) -> int:
        return sum(self._counts.values())

    def claim_layout(self) -> None:
        """Nothing to record: a memory store lives and dies with its process."""

    def close(self) -> None:
        pass



def _drop_older(stream: deque[tuple[float, dict[str, object]]], oldest: float | None) -> None:
    """Drop the entries written before ``oldest`` (wall time), as Redis' ``MINID`` trims."""
    while oldest is not None and stream and stream[0][0] < oldest:
        stream.popleft()
