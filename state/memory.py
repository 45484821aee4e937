"""An in-process state store with the same contract as Redis, for tests and experiments."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence

import msgpack
from churnwatch.state.base import shard_of

from churnwatch.core.customer import CustomerState
from churnwatch.core.engine import ShardState, SuddenDrop, TierTransition


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
               transitions: Sequence[TierTransition], drops: Sequence[SuddenDrop]) -> None:
        for cid, state in changed.items():
            self._customers[cid] = msgpack.packb(state.to_wire())
            if state.next_review_at is None:
                self._due[shard].pop(cid, None)
            else:
                self._due[shard][cid] = float(state.next_review_at)
        self._shards[shard] = msgpack.packb(shard_state.to_wire())
        self._positions[shard] = dict(shard_state.positions)
        for transition in transitions:
            self._transitions.append(transition.as_dict())

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

    def add_dead_letters(self, records: Iterable[Mapping[str, object]]) -> None:
        self._dead.extend(dict(r) for r in records)

    def dead_letters(self, count: int) -> list[dict[str, object]]:
        return list(reversed(self._dead))[:count]

    def customer_count(self) -> int:
        return len(self._customers)

    def close(self) -> None:
        pass

