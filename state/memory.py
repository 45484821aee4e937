"""An in-process state store with the same contract as Redis, for tests and experiments."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence

import msgpack
from churnwatch.state.base import (
    UrgencySelection,
    dead_letter_position,
    merge_ranked,
    segment_key_part,
    shard_of,
    urgency_ranges,
    urgency_score,
)

from churnwatch.core.customer import CustomerState
from churnwatch.core.engine import ShardState, TierTransition


class MemoryStore:
    """Keeps everything in dictionaries; states are copied through the wire format, exactly as
    they would be through Redis, so both stores behave the same."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._customers: dict[str, bytes] = {}
        self._shards: dict[int, bytes] = {}
        self._positions: dict[int, dict[int, int]] = {}
        self._due: dict[int, dict[str, float]] = defaultdict(dict)
        self._transitions: deque[dict[str, object]] = deque(maxlen=100_000)
        self._dead: deque[dict[str, object]] = deque(maxlen=100_000)
        self._dead_offsets: dict[str, int] = {}
        # The urgency index: (shard, declared segment) -> customer -> index score.
        self._urgency: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)

    def load_shard(self, shard: int) -> ShardState:
        raw = self._shards.get(shard)
        state = ShardState.from_wire(msgpack.unpackb(raw, strict_map_key=False) if raw else None)
        state.positions = dict(self._positions.get(shard, {}))
        return state

    def load_customers(self, shard: int, customer_ids: Sequence[str]
                       ) -> dict[str, CustomerState | None]:
        out: dict[str, CustomerState | None] = {}
        for cid in customer_ids:
            raw = self._customers.get(cid)
            out[cid] = (CustomerState.from_wire(msgpack.unpackb(raw, strict_map_key=False))
                        if raw else None)
        return out

    def due_customers(self, shard: int, until: float, limit: int) -> list[str]:
        due = sorted((t, c) for c, t in self._due[shard].items() if t <= until)
        return [c for _, c in due[:limit]]

    def next_due(self, shard: int) -> float | None:
        times = self._due[shard].values()
        return min(times) if times else None

    def commit(self, shard: int, shard_state: ShardState, changed: Mapping[str, CustomerState],
               transitions: Sequence[TierTransition]) -> None:
        for cid, state in changed.items():
            self._index(shard, cid, state)
            self._customers[cid] = msgpack.packb(state.to_wire())
            if state.next_review_at is None:
                self._due[shard].pop(cid, None)
            else:
                self._due[shard][cid] = float(state.next_review_at)
        self._shards[shard] = msgpack.packb(shard_state.to_wire())
        self._positions[shard] = dict(shard_state.positions)
        for transition in transitions:
            self._transitions.append(transition.as_dict())

    def _index(self, shard: int, cid: str, state: CustomerState) -> None:
        old = self._customers.get(cid)
        if old is not None:
            old_segment = msgpack.unpackb(old, strict_map_key=False)[2]
            self._urgency[(shard, segment_key_part(old_segment))].pop(cid, None)
        score = urgency_score(state)
        if score is not None:
            self._urgency[(shard, segment_key_part(state.segment))][cid] = score

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
                low, high = urgency_ranges(tier, selection.value_tier)
                inside = sorted(((s, m) for m, s in members.items() if low <= s <= high))
                total += len(inside)
                ranges.append((tier, [(m, s) for s, m in inside[:wanted]]))
        ids = merge_ranked(ranges, wanted)[offset:]
        return [(cid, state) for cid in ids
                if (state := self.customer(cid)) is not None], total

    def customer(self, customer_id: str) -> CustomerState | None:
        return self.load_customers(shard_of(customer_id, self.shards), [customer_id])[
            customer_id]

    def iter_customers(self) -> Iterator[tuple[str, CustomerState]]:
        for cid, raw in list(self._customers.items()):
            yield cid, CustomerState.from_wire(msgpack.unpackb(raw, strict_map_key=False))

    def shard_states(self) -> list[ShardState]:
        return [self.load_shard(s) for s in sorted(self._shards)]

    def recent_transitions(self, count: int) -> list[dict[str, object]]:
        items = list(self._transitions)[-count:] if count else []
        return sorted(items, key=lambda t: -float(t["at"]))  # type: ignore[arg-type]

    def customer_transitions(self, customer_id: str, count: int) -> list[dict[str, object]]:
        mine = [t for t in self._transitions if t["customer_id"] == customer_id]
        return sorted(mine, key=lambda t: -float(t["at"]))[:count]  # type: ignore[arg-type]

    def add_dead_letters(self, records: Sequence[Mapping[str, object]]) -> list[bool]:
        written: list[bool] = []
        for record in records:
            lane, offset = dead_letter_position(record)
            if lane:
                if offset <= self._dead_offsets.get(lane, -1):
                    written.append(False)
                    continue
                self._dead_offsets[lane] = offset
            self._dead.append(dict(record))
            written.append(True)
        return written

    def dead_letters(self, count: int) -> list[dict[str, object]]:
        return list(reversed(self._dead))[:count]

    def customer_count(self) -> int:
        return len(self._customers)

    def close(self) -> None:
        pass

