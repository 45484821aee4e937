"""The state-store plug-in point: what the dataflow needs from wherever customer state lives.

Two implementations share one contract test suite (tests/test_store_contract.py):
:class:`churnwatch.state.memory.MemoryStore` (tests, quick experiments) and
:class:`churnwatch.state.redis_store.RedisStore` (the source of truth in production).

Keys are grouped by shard. A shard is owned by one dataflow worker at a time, and everything the
worker commits for a shard (its customers' bucket checkpoints, the urgency index, the shard's
aggregates and positions, its transitions) is committed at once, so a batch replayed after a
crash either finds all of its effects or none.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from churnwatch.core.columns import CustomerTable
from churnwatch.core.config import ChurnwatchConfig, ConfigError
from churnwatch.core.customer import CustomerState
from churnwatch.core.history import decode_change, history_entry, keep_history
from churnwatch.core.records import ShardState, TierTransition


def shard_of(customer_id: str, shards: int) -> int:
    """The shard of a customer: stable across processes, hosts and Python versions.

    Publishers use the same hash for the source partition (``partition = hash % P``), and the
    shard count is a multiple of P, so every shard reads exactly one partition.

    >>> shard_of("c-42", 16) == shard_of("c-42", 16)
    True
    """
    return zlib.crc32(customer_id.encode()) % shards


def bucket_of(customer_id: str, shards: int, buckets: int) -> int:
    """The hash bucket of a customer within its shard: stable, like :func:`shard_of`, and
    independent of it (the bits of the hash the shard did not use), so a shard's customers
    spread over all of its buckets.

    >>> bucket_of("c-42", 16, 256) == bucket_of("c-42", 16, 256) < 256
    True
    """
    return (zlib.crc32(customer_id.encode()) // shards) % buckets


class LayoutMismatch(ConfigError):
    """The store was written with another shard or bucket count than the configuration's: read
    or written with this one, every customer would be looked for in the wrong place."""


@dataclass(frozen=True)
class StoreLayout:
    """How a store lays out and retains what it keeps (``[state]`` in the configuration).

    ``buckets``: customer hash buckets per shard; every store reading the same data must use
    the same number (a different one finds no customer). ``transitions_kept``: transition
    records kept across all shards (each shard's stream keeps its share);
    ``dead_letters_kept``: dead letters kept; the ``*_max_age`` ones drop entries older than
    that many seconds of wall time (0: no age limit). ``history_days``: every tier change of that
    many days is kept in the customer's own state for the customer page, and at least the
    ``history_kept`` newest."""

    buckets: int = 2048
    transitions_kept: int = 3_000
    transitions_max_age: float = 7 * 86400.0
    dead_letters_kept: int = 1_000
    dead_letters_max_age: float = 30 * 86400.0
    history_kept: int = 3
    history_days: float = 365.0

    @classmethod
    def from_config(cls, config: ChurnwatchConfig) -> StoreLayout:
        """The layout a configuration asks for."""
        return cls(buckets=config.customer_buckets, transitions_kept=config.transitions_kept,
                   transitions_max_age=config.transitions_max_age_days * 86400.0,
                   dead_letters_kept=config.dead_letters_kept,
                   dead_letters_max_age=config.dead_letters_max_age_days * 86400.0,
                   history_kept=config.score_history_length,
                   history_days=config.tier_history_days)

    def transitions_per_shard(self, shards: int) -> int:
        """Each shard stream's share of ``transitions_kept`` (at least 1).

        >>> StoreLayout(transitions_kept=3_000).transitions_per_shard(16)
        188
        """
        return max(-(-self.transitions_kept // shards), 1)


# -- a customer's tier history ----------------------------------------------------------------
#
# Kept in the customer's own state (``CustomerState.history``), newest first, one compact list
# per transition (``churnwatch.core.history``): the time, the tiers and cause, the scores in whole
# points, the chance of ordering and the reasons as codes with their numbers, about 12 bytes.
# Every change of the last ``history_days`` is kept (and the ``history_kept`` newest, however
# old). The words are rebuilt from the codes when read; while the shard's transition stream
# still holds a change, its record (the words of the moment, the suggestion) is used instead.


def remember_transitions(changed: Mapping[str, CustomerState],
                         transitions: Sequence[TierTransition], kept: int,
                         keep_days: float = 365.0) -> None:
    """Add each transition to the front of its customer's ``history``, keeping every change
    within ``keep_days`` of the newest and at least the ``kept`` newest. Both stores call it in
    ``commit`` before writing the states, so the history is committed with the state,
    atomically and exactly once."""
    for transition in transitions:
        state = changed.get(transition.customer_id)
        if state is not None:
            state.history = keep_history([history_entry(transition), *state.history],
                                         transition.at, keep_days, kept)


def history_records(customer_id: str, state: CustomerState | None, count: int,
                    retained: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """A customer's newest transitions (newest first) as records like the stream's, each with
    ``reason_codes`` (``[name, *numbers]``) and ``chance`` (percent) from the stored evidence.

    ``retained`` gives the customer's shard's transition records still in its stream, newest
    first; it is read only until every one of the customer's transitions is found in it (so
    pass a lazy iterable). A transition found there gets that record's fields (its reasons in
    words, its suggestion); for an older one ``reasons`` is empty, for the reader to rebuild
    from the codes (:func:`churnwatch.core.history.reason_words`)."""
    if state is None:
        return []
    out: list[dict[str, object]] = []
    for entry in state.history[:count]:
        change = decode_change(entry)
        out.append({
            "customer_id": customer_id, "from": change.from_tier, "to": change.to_tier,
            "old_score": change.old_score, "new_score": change.new_score,
            "at": change.at, "reasons": [], "cause": change.cause, "chance": change.chance,
            "reason_codes": [[name, *numbers] for name, numbers in change.reasons]})
    wanted = {(int(float(str(r["at"]))), r["from"], r["to"]): r for r in out}
    if wanted:
        for record in retained:
            if record.get("customer_id") != customer_id:
                continue
            key = (math.floor(float(str(record["at"]))), record.get("from"), record.get("to"))
            found = wanted.pop(key, None)
            if found is not None:
                found.update(record)
                found["at"] = float(str(record["at"]))
            if not wanted:
                break
    return out


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
    """Where customers, shard aggregates and the urgency index live."""

    #: How the store lays out and retains what it keeps.
    layout: StoreLayout

    def claim_layout(self) -> None:
        """Before writing: record the shard and bucket counts the store is written with, or
        raise :class:`LayoutMismatch` if it was written with others."""
        ...

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
               transitions: Sequence[TierTransition]) -> None:
        """Write a batch's effects atomically: customers, due index, aggregates, transitions.
        (Sudden drops are in the aggregates, counted per segment: no store kept the records
        one by one, so none is passed.)"""
        ...

    def load_table(self, shard: int, table: CustomerTable) -> None:
        """Put every stored customer of the shard into ``table`` (the columnar engine's, when a
        worker takes the shard over); the shard is then held whole by that worker."""
        ...

    def commit_rows(self, shard: int, shard_state: ShardState, table: CustomerTable,
                    rows: np.ndarray, transitions: Sequence[TierTransition]) -> None:
        """The columnar engine's :meth:`commit`: ``table`` holds the whole shard, ``rows``
        changed (their tier histories already hold ``transitions``). Atomic like
        :meth:`commit`."""
        ...

    def customer(self, customer_id: str) -> CustomerState | None:
        """One customer's state."""
        ...

    def iter_customers(self) -> Iterator[tuple[str, CustomerState]]:
        """Every customer, in no particular order (for export and backtests)."""
        ...

    def shard_customers(self, shard: int) -> Iterator[tuple[str, CustomerState]]:
        """Every customer of one shard, in no particular order (the columnar engine loads its
        shard with it when it starts)."""
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

    def urgency_page(self, selection: UrgencySelection, offset: int, limit: int
                     ) -> tuple[list[tuple[str, CustomerState]], int]:
        """One page of the worklist from the urgency index (most urgent first) and how many
        customers match in all. The index is written by :meth:`commit` with the state."""
        ...

    def admit_segments(self, values: Sequence[str], cap: int) -> SegmentRecord:
        """Record the declared segment values not seen before, shop-wide, in one atomic step:
        each is kept while fewer than ``cap`` are kept, else counted among the refused (a few
        of them remembered, for ``status``). A value once kept or refused stays so. Called by a
        shard before it scores a batch that declares values its engine does not know."""
        ...

    def segment_record(self) -> SegmentRecord:
        """The segment values kept so far (in the order they were kept) and the refused."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# -- the shop's own segments -------------------------------------------------------------------
#
# Segment values the events declare become labels without a configuration naming them, up to
# ``[segments] max_segments``; the rest count as ``other``, so metric labels stay bounded. Which
# values are kept is recorded once, shop-wide, in the store (docs/configuration.md, "Segments"):
# every worker, restart and replay into the same store reads the same record.

#: Refused segment values remembered (as examples for ``churnwatch status``).
REFUSED_KEPT = 20
#: Longer declared values are never kept as labels.
MAX_SEGMENT_CHARS = 64


@dataclass(frozen=True)
class SegmentRecord:
    """The shop's discovered segments: ``kept`` in the order they were first kept, a few of the
    ``refused`` values (at most :data:`REFUSED_KEPT`) and how many were refused in all."""

    kept: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    refused_count: int = 0


def config_with_segments(store: StateStore, config: ChurnwatchConfig) -> ChurnwatchConfig:
    """``config`` with the segments the store has kept: what every reader and writer of the
    store labels customers with."""
    return config.with_discovered(store.segment_record().kept)


def admit_declared(store: StateStore, config: ChurnwatchConfig, segments: Iterable[str | None],
                   asked: set[str]) -> ChurnwatchConfig:
    """``config`` after recording the declared ``segments`` neither it nor ``asked`` (the values
    this caller asked about before, updated here) knows yet: one round trip, only when there
    are any; unchanged when every value is known.

    A shard calls it before scoring a batch, so a value is kept or refused before any customer
    is counted under it, and stays so."""
    known = set(config.segments)
    new = sorted({s for s in segments if s and s not in known and s not in asked})
    if not new:
        return config
    asked.update(new)
    admissible = [s for s in new if len(s) <= MAX_SEGMENT_CHARS]
    record = store.admit_segments(admissible, config.max_segments) if admissible else \
        store.segment_record()
    return config.with_discovered(record.kept)


# -- the urgency index ---------------------------------------------------------------------------
#
# The worklist's order (docs/worklist.md) puts first the customers an agent can still win back:
# at risk, or churned lately, by the value at stake times how far their score fell times how
# recently they last ordered; then those in `watch`, then `healthy`; churned customers already
# long gone when they turned churned come last. Within a group, the priority
#     value x slip x exp(-(now - last order) / RECENCY_DAYS)
# ranks customers the same at every `now` as  ln(value) + ln(slip) + last order / RECENCY_DAYS,
# which does not change while a customer is silent: so it can be written once, with the state.
# Each shard keeps one sorted set per declared segment, whose score encodes (tier, standard
# value, group, rank) in one exact double (below 2**53), and whose members tie-break by id, as
# Redis orders equal scores. The tier and value parts only serve the filters: a page drops them
# and merges the first ``offset + limit`` members of the few ranges a query selects.

#: The order the urgency index holds (2: savable first); a store holding another is rebuilt by
#: its first writer (``RedisStore.claim_layout``) or ``churnwatch reindex``.
URGENCY_ORDER = 2
_TIER_SHIFT = 2.0**48
_STANDARD_SHIFT = 2.0**47
_GROUP_SHIFT = 2**45
#: Priority falls by a factor e for every RECENCY_DAYS since the last order (about half in 42
#: days): a customer silent two months longer must be worth e times more to come first.
RECENCY_DAYS = 60.0
#: A churned customer whose last order was more than this many days before they were last scored
#: is long gone: listed after everyone else (the default horizon of a return, 180 days).
LONG_GONE_DAYS = 180.0
# The rank is (_RANK_MAX - priority) in steps of 2**-33; priorities span about -5 (one cent of
# value, a full score) to 1,700 (the last order in 2106).
_RANK_MAX = 2048.0
_RANK_STEPS = 2.0**33
#: The worklist's groups, most urgent first.
URGENCY_GROUPS = ("at risk or lately churned", "watch", "healthy", "churned, long gone")
_GROUP_OF_TIER = (2, 1, 0, 0)  # healthy, watch, at_risk, churned (unless long gone: 3)


def urgency_order(state: CustomerState) -> tuple[int, int] | None:
    """A customer's (group, rank) on the worklist: smaller is more urgent (``None``: not listed,
    no score yet). The value at stake is the net spend (at least 1); the slip is how far the
    health score is below 100 (at least 1 point); the time is the last order (the first sighting
    when there is none).

    >>> from churnwatch.core.customer import CustomerState
    >>> from churnwatch.core.signals import Purchases
    >>> def customer(spend, last_order_day, tier=2, scored_day=400):
    ...     s = CustomerState(0.0)
    ...     s.score, s.tier, s.scored_at = 30.0, tier, scored_day * 86400.0
    ...     s.purchases = Purchases(1, 0.0, last_order_day * 86400.0, spend, 0.0)
    ...     return s
    >>> urgency_order(customer(100.0, 380)) < urgency_order(customer(50.0, 380))  # more at stake
    True
    >>> urgency_order(customer(100.0, 380)) < urgency_order(customer(300.0, 200))  # fresher
    True
    >>> urgency_order(customer(900.0, 100, tier=3))[0]  # churned 300 days after the last order
    3
    """
    if state.score is None or state.tier < 0:
        return None
    bought = state.purchases
    last = bought.last_order if bought.last_order is not None else state.first_seen
    group = _GROUP_OF_TIER[min(state.tier, 3)]
    if state.tier == 3 and state.scored_at - last > LONG_GONE_DAYS * 86400.0:
        group = 3
    value = max(bought.spend - bought.refunds, 1.0)
    slip = max(100.0 - min(max(state.score, 0.0), 100.0), 1.0) / 100.0
    priority = math.log(value) + math.log(slip) + max(last, 0.0) / (RECENCY_DAYS * 86400.0)
    rank = round((_RANK_MAX - min(max(priority, -_RANK_MAX), _RANK_MAX)) * _RANK_STEPS)
    return group, min(max(rank, 0), _GROUP_SHIFT - 1)


def urgency_score(state: CustomerState) -> float | None:
    """A customer's place in the urgency index (``None``: not listed, no score yet).

    >>> from churnwatch.core.customer import CustomerState
    >>> a, b = CustomerState(0.0), CustomerState(0.0)
    >>> a.score, a.tier, a.high_value = 20.0, 2, False
    >>> b.score, b.tier, b.high_value = 40.0, 2, True
    >>> urgency_score(a) % 2**47 < urgency_score(b) % 2**47   # further slipped, same value
    True
    """
    order = urgency_order(state)
    if order is None:
        return None
    group, rank = order
    return (state.tier * _TIER_SHIFT + (0.0 if state.high_value else _STANDARD_SHIFT)
            + float(group * _GROUP_SHIFT + rank))


def urgency_scores(table: CustomerTable, rows: np.ndarray) -> np.ndarray:
    """:func:`urgency_score` of a table's ``rows`` at once (``nan``: not listed), read from the
    columns: what a commit of the columnar engine writes to the urgency index.

    >>> from churnwatch.core.columns import CustomerTable, set_from_state
    >>> from churnwatch.core.customer import CustomerState
    >>> from churnwatch.core.signals import Purchases
    >>> table, state = CustomerTable(), CustomerState(0.0)
    >>> state.score, state.tier, state.scored_at = 30.0, 3, 400 * 86400.0
    >>> state.purchases = Purchases(2, 0.0, 100 * 86400.0, 80.0, 0.0)
    >>> rows = table.rows_for(["a", "b"], [0.0, 0.0])
    >>> set_from_state(table, 0, state)
    >>> scores = urgency_scores(table, rows)
    >>> bool(scores[0] == urgency_score(state)), bool(np.isnan(scores[1]))
    (True, True)
    """
    c = table.columns
    score = c["score"][rows]
    tier = c["tier"][rows].astype(np.int64)
    last = c["last_order"][rows]
    last = np.where(np.isnan(last), c["first_seen"][rows], last)
    group = np.asarray(_GROUP_OF_TIER, dtype=np.int64)[np.minimum(np.maximum(tier, 0), 3)]
    group[(tier == 3) & (c["scored_at"][rows] - last > LONG_GONE_DAYS * 86400.0)] = 3
    value = np.maximum(c["spend"][rows] - c["refunds"][rows], 1.0)
    slip = np.maximum(100.0 - np.clip(score, 0.0, 100.0), 1.0) / 100.0
    with np.errstate(invalid="ignore"):
        priority = (np.log(value) + np.log(slip)
                    + np.maximum(last, 0.0) / (RECENCY_DAYS * 86400.0))
        rank = np.rint((_RANK_MAX - np.clip(priority, -_RANK_MAX, _RANK_MAX)) * _RANK_STEPS)
    rank = np.clip(rank, 0, _GROUP_SHIFT - 1)
    out = (tier * _TIER_SHIFT + np.where(c["high_value"][rows] != 0, 0.0, _STANDARD_SHIFT)
           + (group * float(_GROUP_SHIFT) + rank))
    out[np.isnan(score) | (tier < 0)] = np.nan
    return out


def _order_part(tier: int, score: float) -> float:
    # The (group, rank) part of an index score: without the tier and value parts, which only
    # serve the filters (exact: every part is an integer below 2**53).
    return (score - tier * _TIER_SHIFT) % _STANDARD_SHIFT


def urgency_ranges(tier: int, value_tier: str | None) -> tuple[float, float]:
    """The (inclusive) index score range of one tier, all value tiers or only ``high`` /
    ``standard``."""
    low = tier * _TIER_SHIFT
    high = low + _TIER_SHIFT - 1
    if value_tier == "high":
        high = low + _STANDARD_SHIFT - 1
    elif value_tier == "standard":
        low += _STANDARD_SHIFT
    return low, high


def value_tiers_of(value_tier: str | None) -> tuple[str, ...]:
    """The value tiers whose index ranges a page reads, one range each: a range mixing both would
    not be sorted once the value part is dropped.

    >>> value_tiers_of(None), value_tiers_of("high")
    (('high', 'standard'), ('high',))
    """
    return ("high", "standard") if value_tier is None else (value_tier,)


@dataclass(frozen=True)
class UrgencySelection:
    """What a worklist page selects: tiers (indexes), declared segments (``segment_filter`` is
    given the raw declared segment, ``None`` for none; ``None`` filter: every segment) and the
    value tier (``high``, ``standard`` or ``None``)."""

    tiers: frozenset[int]
    segment_filter: Callable[[str | None], bool] | None = None
    value_tier: str | None = None


def merge_ranked(ranges: Iterable[tuple[int, Sequence[tuple[str, float]]]], wanted: int
                 ) -> list[str]:
    """The ``wanted`` most urgent customer ids from sorted index ranges, each given with its
    tier (the tier and value parts of the score are dropped so that tiers and value tiers
    interleave as the worklist orders). Within one range, the value part is the same for every
    member, so each range stays sorted."""
    def stream(tier: int, items: Sequence[tuple[str, float]]) -> Iterator[tuple[float, str]]:
        for member, score in items:
            yield _order_part(tier, score), member

    streams = [stream(tier, items) for tier, items in ranges]
    out: list[str] = []
    for _, member in heapq.merge(*streams):
        out.append(member)
        if len(out) >= wanted:
            break
    return out


def ranges_needing_more(ranges: Sequence[tuple[int, Sequence[tuple[str, float]]]],
                        counts: Sequence[int], wanted: int) -> list[int]:
    """Which ranges must be read further before the ``wanted`` most urgent are known: those not
    read to their end whose last member read is still ahead of the ``wanted``-th most urgent
    member read so far (anything after it in that range could still make the page). Lets a
    page read a few members of each range instead of ``wanted`` of every one.

    >>> ranges_needing_more([(0, [("a", 1.0), ("b", 2.0)]), (0, [("c", 5.0)])], [3, 9], 3)
    [0]
    """
    def key(tier: int, item: tuple[str, float]) -> tuple[float, str]:
        return _order_part(tier, item[1]), item[0]

    read = [key(tier, item) for tier, items in ranges for item in items]
    if len(read) < wanted:
        return [i for i, (_, items) in enumerate(ranges) if len(items) < counts[i]]
    boundary = heapq.nsmallest(wanted, read)[-1]
    return [i for i, (tier, items) in enumerate(ranges)
            if len(items) < counts[i] and (not items or key(tier, items[-1]) < boundary)]


def segment_key_part(segment: str | None) -> str:
    """The declared segment as the index key's suffix (``""`` for none)."""
    return segment or ""


def claim_layout_of(factory: Callable[[], StateStore]) -> None:
    """Open a store from ``factory``, record or check its layout (:meth:`StateStore.claim_layout`)
    and close it: what a writing command does before its flow starts, so that a store written
    with another shard count stops it with a plain error rather than inside a worker."""
    store = factory()
    try:
        store.claim_layout()
    finally:
        store.close()
