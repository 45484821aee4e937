"""The state-store plug-in point: what the dataflow needs from wherever customer state lives.

Two implementations share one contract test suite (tests/test_store_contract.py):
:class:`churnwatch.state.memory.MemoryStore` (tests, quick experiments) and
:class:`churnwatch.state.redis_store.RedisStore` (the source of truth in production).

Keys are grouped by shard. A shard is owned by one dataflow worker at a time, and everything the
worker writes for one batch of a shard (customers, the due-time index, the shard's aggregates,
its transitions) is committed at once, so a batch replayed after a crash either finds all of its
effects or none.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from churnwatch.core.customer import CustomerState
from churnwatch.core.engine import ShardState, SuddenDrop, TierTransition


def shard_of(customer_id: str, shards: int) -> int:
    """The shard of a customer: stable across processes, hosts and Python versions.

    Publishers use the same hash for the source partition (``partition = hash % P``), and the
    shard count is a multiple of P, so every shard reads exactly one partition.

    >>> shard_of("c-42", 16) == shard_of("c-42", 16)
    True
    """
    return zlib.crc32(customer_id.encode()) % shards


def dead_letter_position(record: Mapping[str, object]) -> tuple[str, int]:
    """The replayable position of a dead-letter record: ``(partition, offset)``, or ``("", -1)``
    when it has none (then it is written every time it comes).

    >>> dead_letter_position({"partition": "redis:events:0", "offset": 17})
    ('redis:events:0', 17)
    >>> dead_letter_position({"position": "x:1"})
    ('', -1)
    """
    partition = record.get("partition")
    offset = record.get("offset")
    if (not isinstance(partition, str) or not partition or isinstance(offset, bool)
            or not isinstance(offset, int) or offset < 0):
        return "", -1
    return partition, offset


class StateStore(Protocol):
    """Where customers, shard aggregates and the due-time index live."""

    def load_shard(self, shard: int) -> ShardState:
        """The shard's priors, watermark and aggregates (fresh ones for a new shard). Called by
        the dataflow once per shard when a worker takes the shard over (start or resume)."""
        ...

    def load_customers(self, shard: int, customer_ids: Sequence[str]
                       ) -> dict[str, CustomerState | None]:
        """The stored state of each customer (``None`` if unknown), in one round trip."""
        ...

    def due_customers(self, shard: int, until: float, limit: int) -> list[str]:
        """Customers of the shard whose review time is at or before ``until``, earliest first."""
        ...

    def next_due(self, shard: int) -> float | None:
        """The earliest review time in the shard, for scheduling the next wake-up."""
        ...

    def commit(self, shard: int, shard_state: ShardState, changed: Mapping[str, CustomerState],
               transitions: Sequence[TierTransition], drops: Sequence[SuddenDrop]) -> None:
        """Write a batch's effects atomically: customers, due index, aggregates, transitions."""
        ...

    def customer(self, customer_id: str) -> CustomerState | None:
        """One customer's state."""
        ...

    def iter_customers(self) -> Iterator[tuple[str, CustomerState]]:
        """Every customer, in no particular order (for export and backtests)."""
        ...

    def shard_states(self) -> list[ShardState]:
        """Every shard's state (for metrics), in one round trip."""
        ...

    def recent_transitions(self, count: int) -> list[dict[str, object]]:
        """The newest transitions across shards, newest first."""
        ...

    def customer_transitions(self, customer_id: str, count: int) -> list[dict[str, object]]:
        """A customer's newest transitions, newest first."""
        ...

    def add_dead_letters(self, records: Sequence[Mapping[str, object]]) -> list[bool]:
        """Append dead-letter records (payload, reason, position), each source position once.

        A record whose ``partition`` is a non-empty string is written only if its ``offset`` (an
        integer >= 0) is above every offset written before under that ``partition``, and that
        high-water mark advances in the same atomic step: sources replay a partition in order
        after a resume, so a lower or equal offset is a dead letter already written. Records
        without a partition are always written (at least once). Returns, per record, whether it
        was written now: only those count as new dead letters (metrics, files). Called by the
        dataflow's dead-letter sink once per batch, and by a shard before its commit for the
        ``too_late`` ones it found; one round trip per call.
        """
        ...

    def dead_letters(self, count: int) -> list[dict[str, object]]:
        """The newest dead letters, newest first."""
        ...

    def customer_count(self) -> int:
        """Customers held."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
