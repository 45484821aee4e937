"""The Redis state store: the source of truth for customers, due times and aggregates.

Key layout (``P`` is ``[state] key_prefix``, ``N`` the shard; the ``{sN}`` hash tag keeps one
shard's keys in one Redis Cluster slot, so a batch commits in one MULTI/EXEC):

- ``P:{sN}:k:<bucket>``       string, the checkpoint of the bucket's customers: their columns
  (:data:`~churnwatch.core.columns.SCHEMA`), ids, labels and tier histories as one zstd blob
  (:mod:`churnwatch.state.checkpoint`), the bucket being
  :func:`~churnwatch.state.base.bucket_of` the id. A commit rewrites every bucket one of its
  customers is in
- ``P:{sN}:shard``            msgpack shard state: learned priors, watermark, aggregates
- ``P:{sN}:transitions``      stream of tier transitions, for a CRM or WhatsApp tool, retained
  by count and age (:class:`~churnwatch.state.base.StoreLayout`)
- ``P:{sN}:commit``           token of the shard's last commit (makes a retried commit safe)
- ``P:{sN}:u:<segment>``      sorted set, the urgency index of the customers who declared
  ``segment`` ("" for none): customer -> :func:`~churnwatch.state.base.urgency_score`
- ``P:{sN}:useg``             set of the declared segments that have an urgency index
- ``P:layout``                hash: the ``shards`` and ``buckets`` the store is written with,
  and its ``format`` (2: bucket checkpoints; a store of format 1, one hash field per customer in
  ``P:{sN}:c:<bucket>``, is converted by its first writer: :meth:`RedisStore.upgrade_format`)
- ``P:urgency_order``         which order the urgency index holds
  (:data:`~churnwatch.state.base.URGENCY_ORDER`; a writer rebuilds an index of another order)
- ``P:{segments}``            sorted set of the segment values events declared that are kept
  as labels, in the order they were kept (``:refused`` and ``:refused_count`` beside it)
- ``P:{sN}:positions``        hash: source partition id -> highest offset the shard processed,
                              and ``committed_at`` (wall clock of the last commit); written in
                              the commit's transaction (``churnwatch status`` reads it)
- ``P:deadletters``           stream of dead letters, retained by count and age
- ``P:deadletters:offsets``   hash, source partition -> highest offset dead-lettered (each source
  position is dead-lettered once, see :meth:`RedisStore.add_dead_letters`)
- ``P:deadletters:committed_at`` hash, source partition -> wall clock of the last dead-letter
  write that held it: a batch of dead letters only commits no shard, yet is the partition's
  commit (``churnwatch status``)

Every call goes through :meth:`RedisStore._call`, which retries with exponential backoff while
Redis is unreachable, logging and reporting each failure to the observer, so an outage pauses
the flow instead of crashing it. A refused login (wrong password) is raised at once: waiting
cannot cure it (see ``churnwatch.state.connection``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import msgpack
import numpy as np
import redis
from churnwatch.state.base import (
    REFUSED_KEPT,
    URGENCY_ORDER,
    LayoutMismatch,
    SegmentRecord,
    StoreLayout,
    UrgencySelection,
    bucket_of,
    dead_letter_position,
    history_records,
    merge_ranked,
    ranges_needing_more,
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
    decode_customers,
    decode_rows,
    decode_states,
    encode_rows,
    with_states,
)
from churnwatch.state.cluster import NotConnected, RedisTopology, redis_client, topology_of
from churnwatch.state.connection import TRANSIENT_ERRORS, is_lost_connection
from redis.cluster import RedisCluster

from churnwatch.core.aggregates import ScoredCustomers
from churnwatch.core.columns import CustomerTable
from churnwatch.core.customer import CustomerState
from churnwatch.core.records import ShardState, TierTransition

log = logging.getLogger("churnwatch.state")
T = TypeVar("T")

#: The store's format (``P:layout`` ``format``): 2, customers as bucket checkpoints.
STORE_FORMAT = 2

DEAD_LETTERS_PER_SCRIPT = 500
DEAD_LETTER_BYTES_PER_SCRIPT = 16 << 20

# Appends dead letters whose source position is new, advancing the partition's high-water mark in
# the same atomic step. Offsets travel as 20-digit text (Lua numbers are doubles, stream offsets
# reach 1.7e18), so comparing texts compares offsets.
# KEYS: the stream, the high-water hash, the commit-time hash. ARGV: MAXLEN, MINID ("0": no age
# limit), the wall clock now, then per record: partition ("" when it has none), offset, number of
# field pairs, the pairs. Returns 1 (written) or 0 per record.
_ADD_DEAD_LETTERS = """
local out = {}
local i = 4
while i <= #ARGV do
  local lane, offset, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fields = {}
  for j = 1, 2 * n do fields[j] = ARGV[i + 2 + j] end
  i = i + 3 + 2 * n
  local write = 1
  if lane ~= "" then
    redis.call('HSET', KEYS[3], lane, ARGV[3])
    local seen = redis.call('HGET', KEYS[2], lane)
    if seen and seen >= offset then
      write = 0
    else
      redis.call('HSET', KEYS[2], lane, offset)
    end
  end
  if write == 1 then
    redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', unpack(fields))
  end
  out[#out + 1] = write
end
if ARGV[2] ~= "0" then
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
end
return out
"""


# Records declared segment values shop-wide (state.base.SegmentRecord): each value not seen
# before is kept while fewer than the cap are, else counted as refused (a few remembered).
# KEYS: kept (sorted set, value -> the order it was kept in), refused (set), the refused count.
# ARGV: the cap, how many refused to remember, then the values. Returns the kept values in order.
_ADMIT_SEGMENTS = """
local cap, remember = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
  local value = ARGV[i]
  if not redis.call('ZSCORE', KEYS[1], value) and redis.call('SISMEMBER', KEYS[2], value) == 0 then
    local kept = redis.call('ZCARD', KEYS[1])
    if kept < cap then
      redis.call('ZADD', KEYS[1], kept, value)
    else
      redis.call('INCR', KEYS[3])
      if redis.call('SCARD', KEYS[2]) < remember then
        redis.call('SADD', KEYS[2], value)
      end
    end
  end
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class RedisObserver(Protocol):
    """Told about every round trip and failure (the metrics module implements it)."""

    def roundtrip(self, operation: str, seconds: float) -> None:
        """A call of ``operation`` took ``seconds``."""

    def error(self, operation: str, exc: BaseException) -> None:
        """A call of ``operation`` failed and will be retried."""


class _Quiet:
    def roundtrip(self, operation: str, seconds: float) -> None:
        pass

    def error(self, operation: str, exc: BaseException) -> None:
        pass


class RedisStore:
    """The production store. ``max_wait`` bounds how long one call keeps retrying before giving
    up (``None``: forever, what a live monitor wants)."""

    def __init__(self, url: str, shards: int, prefix: str = "cw",
                 observer: RedisObserver | None = None, max_wait: float | None = None,
                 client: redis.Redis | RedisCluster | None = None,
                 layout: StoreLayout | None = None) -> None:
        self.url = url
        self.shards = shards
        self.prefix = prefix
        self.observer: RedisObserver = observer or _Quiet()
        self.max_wait = max_wait
        self.layout = layout or StoreLayout()
        self.topology: RedisTopology = NotConnected()
        self._layout_checked = True  # not while the client is being made
        # A cluster client connects when made: while no node answers, wait as any call does.
        self.client = client or self._call("read_state", lambda: redis_client(
            url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=10))
        # One Redis or a cluster's nodes: where transactions, scripts and scans must go.
        self.topology = topology_of(self.client)
        # The layout record is checked by the first call that goes to Redis (making a store
        # stays free of I/O).
        self._layout_checked = False
        # The declared segment of each customer the last load_customers() of a shard read, so
        # commit() moves a customer whose segment changed out of its old urgency index without
        # another round trip (the dataflow loads a batch's customers, then commits them).
        self._loaded_segments: dict[int, dict[str, str | None]] = {}
        # Shards read whole by shard_customers(): their _loaded_segments then names every
        # stored customer and is kept up to date by commit(), so a customer it does not name is
        # new (in no urgency index yet).
        self._whole_shards: set[int] = set()
        # Per shard held whole by a worker: which rows of its table make each bucket.
        self._bucket_rows: dict[int, BucketRows] = {}

    def claim_layout(self) -> None:
        """Record the shard and bucket counts the store is written with (``{prefix}:layout``),
        if no record is there yet; raise :class:`LayoutMismatch` if it was written with others.
        Called by whatever writes (the dataflow); readers only check, at their first call."""
        checked, self._layout_checked = self._layout_checked, True  # one check, not two
        try:
            stored = self._check_layout(claim=True)
        except BaseException:
            self._layout_checked = checked
            raise
        if stored.get("format", 1) < STORE_FORMAT:
            converted = self.upgrade_format()
            if converted:
                log.warning("converted %d customers stored by an earlier churnwatch (one hash "
                            "field each) to bucket checkpoints", converted)
        self._urgency_index_in_order()

    def _urgency_index_in_order(self) -> None:
        """Rebuild, once, an urgency index written by a version with another worklist order
        (``{prefix}:urgency_order`` names the order it holds): a writer does it before it
        writes, since a page of a set holding two orders would be neither."""
        key = f"{self.prefix}:urgency_order"
        held = self._call("read_state", lambda: self.client.get(key))
        if held is not None and int(held) == URGENCY_ORDER:
            return
        indexed = self.rebuild_urgency_index()
        if indexed:
            log.warning("the worklist's urgency index held another order: rebuilt for %d "
                        "customers", indexed)

    def _check_layout(self, claim: bool) -> dict[str, int]:
        key = f"{self.prefix}:layout"
        mine = {"shards": self.shards, "buckets": self.layout.buckets}

        def read() -> dict[bytes, bytes]:
            stored: dict[bytes, bytes] = self.client.hgetall(key)
            if not stored:
                # Written before the record existed: a shard state beyond this configuration's
                # shard count gives it away (one round trip: those of 4x as many shards).
                beyond = range(self.shards, min(4 * self.shards + 64, 4096))
                pipe = self.client.pipeline(transaction=False)
                for shard in beyond:
                    pipe.exists(f"{self._tag(shard)}:shard")
                found = [shard for shard, hit in zip(beyond, pipe.execute(), strict=True) if hit]
                if found:
                    raise LayoutMismatch(
                        f"the Redis store under the key prefix {self.prefix!r} was written with "
                        f"more than [state] shards = {self.shards} (it holds shard {found[-1]}): "
                        f"set [state] shards to the count it was written with")
                if claim:
                    # Both counts in one transaction, so a reader never sees one without the
                    # other; the first of racing writers wins.
                    pipe = self.topology.node_for(key).pipeline(transaction=True)
                    for field, value in {**mine, "format": STORE_FORMAT}.items():
                        pipe.hsetnx(key, field, value)
                    pipe.execute()
                    stored = self.client.hgetall(key)
            return stored

        stored = {k.decode(): int(v) for k, v in self._call("read_state", read).items()}
        if stored and {k: stored.get(k) for k in mine} != mine:
            raise LayoutMismatch(
                f"the Redis store under the key prefix {self.prefix!r} was written with "
                f"[state] shards = {stored.get('shards')} and customer_buckets = "
                f"{stored.get('buckets')}; this configuration says {self.shards} and "
                f"{self.layout.buckets}: use the store's counts (changing them means moving "
                f"every customer's state) or another key_prefix")
        if stored and not claim and stored.get("format", 1) < STORE_FORMAT:
            raise LayoutMismatch(
                f"the Redis store under the key prefix {self.prefix!r} holds customers in the "
                f"form of an earlier churnwatch (store format {stored.get('format', 1)}): "
                f"start the monitor (`churnwatch run`) or `churnwatch upgrade` once, which "
                f"converts it")
        return stored

    # -- keys ---------------------------------------------------------------------------------

    def _tag(self, shard: int) -> str:
        return f"{self.prefix}:{{s{shard}}}"

    def customer_bucket(self, customer_id: str, shard: int | None = None) -> str:
        """The key of the checkpoint holding a customer's state."""
        if shard is None:
            shard = shard_of(customer_id, self.shards)
        return f"{self._tag(shard)}:k:{bucket_of(customer_id, self.shards, self.layout.buckets)}"

    def _read_blobs(self, keys: Sequence[str]) -> list[bytes | None]:
        """The checkpoints at ``keys`` (``None``: no such bucket yet), in one round trip."""
        if not keys:
            return []

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            return pipe.execute()

        return self._call("read_state", read)

    def _read_customers(self, customer_ids: Sequence[str]) -> list[CustomerState | None]:
        """The states of customers of any shards, in order: their buckets read in one round
        trip, only their rows decoded."""
        by_key: dict[str, list[str]] = {}
        for cid in customer_ids:
            by_key.setdefault(self.customer_bucket(cid), []).append(cid)
        found: dict[str, CustomerState] = {}
        for (key, ids), blob in zip(by_key.items(), self._read_blobs(list(by_key)),
                                    strict=True):
            if blob is not None:
                try:
                    found.update(decode_customers(blob, ids))
                except ValueError as exc:
                    raise ValueError(f"the Redis key {key!r}: {exc}") from exc
        return [found.get(cid) for cid in customer_ids]

    # -- resilience ---------------------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        if not self._layout_checked:
            self._layout_checked = True  # the check's own calls come through here
            try:
                self._check_layout(claim=False)
            except BaseException:
                self._layout_checked = False
                raise
        delay = 0.1
        started = time.monotonic()
        while True:
            t0 = time.perf_counter()
            try:
                result = fn()
            except TRANSIENT_ERRORS as exc:
                self.observer.error(operation, exc)
                if not is_lost_connection(exc):
                    raise
                waited = time.monotonic() - started
                if self.max_wait is not None and waited >= self.max_wait:
                    raise
                log.warning("redis %s failed (%s); retrying in %.1f s", operation, exc, delay)
                time.sleep(delay)
                self.topology.refresh()
                delay = min(delay * 2.0, 5.0)
                continue
            self.observer.roundtrip(operation, time.perf_counter() - t0)
            return result

    # -- StateStore ---------------------------------------------------------------------------

    def load_shard(self, shard: int) -> ShardState:
        tag = self._tag(shard)

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(f"{tag}:shard")
            pipe.hgetall(f"{tag}:positions")
            return pipe.execute()

        raw, positions = self._call("read_state", read)
        state = ShardState.from_wire(msgpack.unpackb(raw, strict_map_key=False) if raw else None)
        state.positions = _positions(positions)
        return state

    def committed_positions(self) -> dict[int, CommittedPositions]:
        """Per shard that has committed: the highest offset it processed per source partition
        id, and the wall-clock time of its last commit (for ``churnwatch status``)."""

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.shards):
                pipe.hgetall(f"{self._tag(shard)}:positions")
            return pipe.execute()

        out: dict[int, CommittedPositions] = {}
        for shard, fields in enumerate(self._call("read_state", read)):
            if fields:
                at = fields.get(b"committed_at")
                out[shard] = CommittedPositions(_positions(fields),
                                                float(at) if at is not None else None)
        return out

    def dead_letter_count(self) -> tuple[int, int]:
        """Dead letters ever added to the dead-letter stream, and how many it still holds
        (retained by ``StoreLayout.dead_letters_kept`` and ``dead_letters_max_age``)."""
        key, _ = self.topology.dead_letter_keys(self.prefix)

        def read() -> tuple[int, int]:
            try:
                info = self.client.xinfo_stream(key)
            except redis.ResponseError:  # no such key: none yet
                return 0, 0
            length = int(info["length"])
            return int(info.get("entries-added", length)), length

        return self._call("read_state", read)

    def load_customers(self, shard: int, customer_ids: Sequence[str]
                       ) -> dict[str, CustomerState | None]:
        if not customer_ids:
            return {}
        out = dict(zip(customer_ids, self._read_customers(customer_ids), strict=True))
        if shard not in self._whole_shards:
            self._loaded_segments[shard] = {cid: (None if state is None else
                                                  segment_key_part(state.segment))
                                            for cid, state in out.items()}
        return out

    def load_table(self, shard: int, table: CustomerTable) -> None:
        """Put every customer of the shard into ``table`` (the columnar engine's, when a worker
        takes the shard over), decoded straight into the columns. The shard is then held
        whole: :meth:`commit_rows` writes its buckets."""
        for chunk in self._shard_blobs(shard):
            for key, blob in chunk:
                _decode_into(blob, table, key)
        self._loaded_segments[shard] = {
            cid: segment_key_part(table.label(code))
            for cid, code in zip(table.ids, table["segment"].tolist(), strict=True)}
        self._whole_shards.add(shard)

    def _shard_blobs(self, shard: int) -> Iterator[list[tuple[str, bytes]]]:
        """The shard's checkpoints (key, blob), its buckets read 64 per round trip."""
        tag = self._tag(shard)
        keys = [f"{tag}:k:{bucket}" for bucket in range(self.layout.buckets)]
        for start in range(0, len(keys), 64):
            chunk = keys[start:start + 64]
            yield [(key, blob) for key, blob in zip(chunk, self._read_blobs(chunk),
                                                    strict=True) if blob is not None]

    def due_customers(self, shard: int, until: float, limit: int) -> list[str]:
        """Read from the shard's checkpoints (the worker holding the shard has its review times
        in its columns; this serves tools and tests)."""
        table = self._shard_table(shard)
        due = table["next_review_at"]
        rows = np.nonzero(due <= until)[0].tolist()
        ids = table.ids
        # Equal times in the order of the ids' bytes, as a sorted set would give them.
        rows.sort(key=lambda r: (float(due[r]), ids[r].encode()))
        return [ids[r] for r in rows[:limit]]

    def next_due(self, shard: int) -> float | None:
        due = self._shard_table(shard)["next_review_at"]
        return None if np.isnan(due).all() else float(np.nanmin(due))

    def _shard_table(self, shard: int) -> CustomerTable:
        """The shard's customers in a fresh table (this store's view of what it holds is left
        as it is)."""
        table = CustomerTable()
        for chunk in self._shard_blobs(shard):
            for key, blob in chunk:
                _decode_into(blob, table, key)
        return table

    def commit(self, shard: int, shard_state: ShardState, changed: Mapping[str, CustomerState],
               transitions: Sequence[TierTransition]) -> None:
        """The reference engine's commit: the buckets of ``changed`` are read, the states put
        in, and written back (whole) with the rest of the batch's effects."""
        layout = self.layout
        remember_transitions(changed, transitions, layout.history_kept, layout.history_days)
        by_bucket: dict[str, list[str]] = {}
        for cid in changed:
            by_bucket.setdefault(self.customer_bucket(cid, shard), []).append(cid)
        keys = list(by_bucket)
        blobs = {key: _merged(key, blob, ((cid, changed[cid]) for cid in by_bucket[key]))
                 for key, blob in zip(keys, self._read_blobs(keys), strict=True)}
        index = ((cid, segment_key_part(state.segment), urgency_score(state))
                 for cid, state in changed.items())
        self._write(shard, shard_state, blobs, self._index_changes(shard, index), transitions)

    def commit_rows(self, shard: int, shard_state: ShardState, table: CustomerTable,
                    rows: np.ndarray, transitions: Sequence[TierTransition]) -> None:
        """The columnar engine's commit: ``table`` holds the whole shard (read by
        :meth:`load_table`, or new) and ``rows`` changed since the last commit, their tier
        histories already holding ``transitions``. Every bucket one of them is in is written
        whole, with the urgency index of ``rows`` and the batch's other effects."""
        groups = self._bucket_rows.setdefault(
            shard, BucketRows(self.shards, self.layout.buckets)).groups(table, rows)
        tag = self._tag(shard)
        blobs = {f"{tag}:k:{bucket}": encode_rows(table, members) for bucket, members in groups}
        ids = table.ids
        changed_ids = [ids[r] for r in rows.tolist()]
        scores = urgency_scores(table, rows).tolist()
        labels = table.labels
        segments = (segment_key_part(labels[code] if code >= 0 else None)
                    for code in table.columns["segment"][rows].tolist())
        index = ((cid, segment, None if score != score else score)
                 for cid, segment, score in zip(changed_ids, segments, scores, strict=True))
        self._write(shard, shard_state, blobs, self._index_changes(shard, index), transitions)

    def _write(self, shard: int, shard_state: ShardState, blobs: Mapping[str, bytes],
               index: tuple[dict[str, dict[str, float]], dict[str, list[str]], set[str]],
               transitions: Sequence[TierTransition]) -> None:
        """One MULTI/EXEC: the buckets' checkpoints, the urgency index changes, the shard's
        state and positions, the transitions."""
        tag = self._tag(shard)
        layout = self.layout
        shard_blob = msgpack.packb(shard_state.to_wire())
        index_add, index_remove, segments = index
        positions: dict[str, str] = {str(p): str(o) for p, o in shard_state.positions.items()}
        positions["committed_at"] = repr(time.time())
        transitions_kept = layout.transitions_per_shard(self.shards)
        oldest_kept = (f"{max(int((time.time() - layout.transitions_max_age) * 1000), 0)}"
                       if transitions and layout.transitions_max_age > 0 else None)
        # A token written in the same transaction tells a retry whether a MULTI/EXEC whose reply
        # was lost did apply: the stream appends must not happen twice.
        token = os.urandom(12)
        commit_key = f"{tag}:commit"
        attempts = 0

        def write() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and self.client.get(commit_key) == token:
                return
            pipe = self.topology.node_for(tag).pipeline(transaction=True)
            pipe.set(commit_key, token)
            if blobs:
                pipe.mset(blobs)  # type: ignore[arg-type]
            pipe.set(f"{tag}:shard", shard_blob)
            for segment, members in index_remove.items():
                pipe.zrem(f"{tag}:u:{segment}", *members)
            for segment, scores in index_add.items():
                pipe.zadd(f"{tag}:u:{segment}", scores)
            if segments:
                pipe.sadd(f"{tag}:useg", *segments)
            pipe.hset(f"{tag}:positions", mapping=positions)
            for transition in transitions:
                record = transition.as_dict()
                fields = {k: json.dumps(v) if isinstance(v, list) else str(v)
                          for k, v in record.items() if v is not None}
                # Exact trimming: the stream then holds the same entries whatever the batches
                # were (a resumed run ends with the stream of an uninterrupted one).
                pipe.xadd(f"{tag}:transitions", fields, maxlen=transitions_kept,
                          approximate=False)
            if oldest_kept is not None:
                pipe.xtrim(f"{tag}:transitions", minid=oldest_kept, approximate=False)
            pipe.execute()

        self._call("write_state", write)

    def _index_changes(self, shard: int,
                       changed: Iterable[tuple[str, str, float | None]]
                       ) -> tuple[dict[str, dict[str, float]], dict[str, list[str]], set[str]]:
        """What the urgency index of a shard needs for a batch whose customers are ``changed``
        (id, declared segment, index score or ``None``): scores to add per segment, members to
        remove per segment (customers whose segment changed, or lost their score), and the
        segments in use."""
        whole = shard in self._whole_shards
        loaded = self._loaded_segments.get(shard, {}) if whole else \
            self._loaded_segments.pop(shard, {})
        add: dict[str, dict[str, float]] = {}
        remove: dict[str, list[str]] = {}
        unknown: list[tuple[str, str, bool]] = []
        for cid, segment, score in changed:
            if score is not None:
                add.setdefault(segment, {})[cid] = score
            if cid not in loaded:
                if whole:  # new to the shard: in no index yet
                    loaded[cid] = segment
                else:
                    unknown.append((cid, segment, score is not None))
                continue
            old = loaded[cid]
            if old is not None and (old != segment or score is None):
                remove.setdefault(old, []).append(cid)
            if whole:
                loaded[cid] = segment
        if unknown:
            # Committed without a load through this store (a bulk loader, a test): take the
            # customers out of every other segment's index of the shard.
            key = f"{self._tag(shard)}:useg"
            known = {m.decode() for m in self._call("read_state",
                                                     lambda: self.client.smembers(key))}
            for cid, segment, listed in unknown:
                for other in known:
                    if other != segment or not listed:
                        remove.setdefault(other, []).append(cid)
        return add, remove, set(add)

    def urgency_page(self, selection: UrgencySelection, offset: int, limit: int
                     ) -> tuple[list[tuple[str, CustomerState]], int]:
        wanted = offset + limit

        def segments() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.shards):
                pipe.smembers(f"{self._tag(shard)}:useg")
            return pipe.execute()

        keys: list[tuple[str, int, str]] = []  # (index key, tier, value tier)
        for shard, members in enumerate(self._call("read_state", segments)):
            for raw in sorted(members):
                segment = raw.decode()
                if selection.segment_filter is None or selection.segment_filter(segment or None):
                    keys.extend((f"{self._tag(shard)}:u:{segment}", tier, value)
                                for tier in sorted(selection.tiers)
                                for value in value_tiers_of(selection.value_tier))

        # The first read counts every range and takes a few members of each; further reads
        # take more only from the ranges that can still reach the page.
        chunk = max(8, -(-2 * wanted // max(len(keys), 1)))
        ranked: list[tuple[int, list[tuple[str, float]]]] = [(tier, []) for _, tier, _ in keys]
        counts: list[int] = []
        todo = list(range(len(keys)))
        while todo:
            def read(todo: list[int] = todo, chunk: int = chunk, first: bool = not counts
                     ) -> list[Any]:
                pipe = self.client.pipeline(transaction=False)
                for i in todo:
                    key, tier, value = keys[i]
                    low, high = urgency_ranges(tier, value)
                    if first:
                        pipe.zcount(key, low, high)
                    pipe.zrangebyscore(key, low, high, start=len(ranked[i][1]), num=chunk,
                                       withscores=True)
                return pipe.execute()

            replies = self._call("read_state", read)
            if not counts:
                counts = [int(n) for n in replies[0::2]]
                replies = replies[1::2]
            for i, items in zip(todo, replies, strict=True):
                ranked[i][1].extend((m.decode(), s) for m, s in items)
            todo = ranges_needing_more(ranked, counts, wanted)
            chunk *= 4
        total = sum(counts)
        ids = merge_ranked(ranked, wanted)[offset:]
        if not ids:
            return [], total
        states = self._read_customers(ids)
        return [(cid, state) for cid, state in zip(ids, states, strict=True)
                if state is not None], total

    def rebuild_urgency_index(self) -> int:
        """Write the urgency index of every customer afresh, shard by shard (for state written
        by a version without the index: ``churnwatch reindex``). Returns the customers indexed.
        A commit racing with it for the same customer may leave that customer's previous place
        until the customer's next commit; run it before the monitor, or accept that.

        Customers and old index keys are found by one SCAN each (per primary on a cluster), not
        one per shard, and every shard's index is held in memory (about 100 B a customer)
        before the writes, one transaction per shard."""
        indexed = 0
        by_shard: dict[int, dict[str, dict[str, float]]] = {}
        for cid, state in self.iter_customers():
            score = urgency_score(state)
            if score is not None:
                by_shard.setdefault(shard_of(cid, self.shards), {}).setdefault(
                    segment_key_part(state.segment), {})[cid] = score
                indexed += 1
        old: dict[int, list[bytes]] = {}
        pattern = f"{self.prefix}:{{s*}}:u:*"
        head = len(self.prefix) + 3  # "P:{s"
        for node in self.topology.nodes():
            found = self._call("read_state", lambda n=node: list(  # type: ignore[misc]
                n.scan_iter(match=pattern, count=5000)))
            for key in found:
                shard, sep, _ = key.decode()[head:].partition("}:u:")
                if sep and shard.isdigit():
                    old.setdefault(int(shard), []).append(key)
        for shard in range(self.shards):
            tag = self._tag(shard)
            keys = old.get(shard, [])
            by_segment = by_shard.get(shard, {})

            def write(keys: list[Any] = keys,
                      by_segment: dict[str, dict[str, float]] = by_segment, tag: str = tag
                      ) -> None:
                pipe = self.topology.node_for(tag).pipeline(transaction=True)
                if keys:
                    pipe.delete(*keys)
                pipe.delete(f"{tag}:useg")
                for segment, scores in by_segment.items():
                    items = list(scores.items())
                    for start in range(0, len(items), 10_000):
                        pipe.zadd(f"{tag}:u:{segment}", dict(items[start:start + 10_000]))
                if by_segment:
                    pipe.sadd(f"{tag}:useg", *by_segment)
                pipe.execute()

            self._call("write_state", write)
        self._call("write_state", lambda: self.client.set(f"{self.prefix}:urgency_order",
                                                          URGENCY_ORDER))
        return indexed

    def _customer_chunks(self, shard: int) -> Iterator[list[tuple[str, CustomerState]]]:
        """The shard's stored customers, their buckets read 64 per round trip."""
        for chunk in self._shard_blobs(shard):
            yield _decode_states(chunk)

    def upgrade_format(self) -> int:
        """Convert customers stored by an earlier churnwatch (store format 1: one hash field
        each, ``P:{sN}:c:<bucket>``) to bucket checkpoints, 64 buckets a transaction (each
        written and its old hash deleted at once: an interrupted conversion goes on where it
        stopped), then record format 2. Returns the customers converted. The flow's writers
        call it through :meth:`claim_layout`; ``churnwatch upgrade`` too."""
        converted = 0
        for shard in range(self.shards):
            tag = self._tag(shard)
            numbers = list(range(self.layout.buckets))
            for start in range(0, len(numbers), 64):
                chunk = numbers[start:start + 64]

                def read(chunk: list[int] = chunk, tag: str = tag) -> list[Any]:
                    pipe = self.client.pipeline(transaction=False)
                    for bucket in chunk:  # the old hash, and a checkpoint already written
                        pipe.hgetall(f"{tag}:c:{bucket}")
                        pipe.get(f"{tag}:k:{bucket}")
                    return pipe.execute()

                blobs: dict[str, bytes] = {}
                old: list[str] = []
                replies = self._call("read_state", read)
                for bucket, fields, existing in zip(chunk, replies[0::2], replies[1::2],
                                                    strict=True):
                    if not fields:
                        continue
                    key = f"{tag}:k:{bucket}"
                    # By id: a hash's own order depends on its encoding.
                    states = ((cid.decode(), CustomerState.from_wire(
                        msgpack.unpackb(raw, strict_map_key=False)))
                        for cid, raw in sorted(fields.items()))
                    blobs[key] = _merged(key, existing, states)
                    # The hash, and the bucket's due index (review times are in the columns).
                    old += [f"{tag}:c:{bucket}", f"{tag}:d:{bucket}"]
                    converted += len(fields)
                if not blobs:
                    continue

                def write(blobs: dict[str, bytes] = blobs, old: list[str] = old,
                          tag: str = tag) -> None:
                    pipe = self.topology.node_for(tag).pipeline(transaction=True)
                    pipe.mset(blobs)  # type: ignore[arg-type]
                    pipe.delete(*old)
                    pipe.execute()

                self._call("write_state", write)
            due = f"{tag}:due"  # the old due index's summary
            self._call("write_state", lambda due=due: self.client.delete(due))  # type: ignore[misc]
        key = f"{self.prefix}:layout"
        self._call("write_state", lambda: self.client.hset(key, "format", str(STORE_FORMAT)))
        return converted

    def _segment_keys(self) -> list[str]:
        # One hash tag: one slot of a Redis Cluster, so one script updates all three.
        key = f"{self.prefix}:{{segments}}"
        return [key, f"{key}:refused", f"{key}:refused_count"]

    def admit_segments(self, values: Sequence[str], cap: int) -> SegmentRecord:
        keys = self._segment_keys()
        node = self.topology.node_for(keys[0])

        # Idempotent: a retry after a lost reply finds the values recorded.
        kept = self._call("write_state", lambda: node.eval(
            _ADMIT_SEGMENTS, len(keys), *keys, cap, REFUSED_KEPT, *values))
        refused = self.segment_record()
        return SegmentRecord(tuple(v.decode() for v in kept), refused.refused,
                             refused.refused_count)

    def segment_record(self) -> SegmentRecord:
        keys = self._segment_keys()
        node = self.topology.node_for(keys[0])

        def read() -> list[Any]:
            pipe = node.pipeline(transaction=False)
            pipe.zrange(keys[0], 0, -1)
            pipe.smembers(keys[1])
            pipe.get(keys[2])
            return pipe.execute()

        kept, refused, count = self._call("read_state", read)
        return SegmentRecord(tuple(v.decode() for v in kept),
                             tuple(sorted(v.decode() for v in refused)), int(count or 0))

    def customer(self, customer_id: str) -> CustomerState | None:
        return self.load_customers(shard_of(customer_id, self.shards), [customer_id])[
            customer_id]

    def iter_customers(self) -> Iterator[tuple[str, CustomerState]]:
        for shard in range(self.shards):
            for chunk in self._customer_chunks(shard):
                yield from chunk

    def shard_customers(self, shard: int) -> Iterator[tuple[str, CustomerState]]:
        segments: dict[str, str | None] = {}
        for chunk in self._customer_chunks(shard):
            for cid, state in chunk:
                segments[cid] = segment_key_part(state.segment)
                yield cid, state
        self._loaded_segments[shard] = segments
        self._whole_shards.add(shard)

    def shard_states(self) -> list[ShardState]:
        keys = [f"{self._tag(s)}:shard" for s in range(self.shards)]
        raws = self._call("scrape", lambda: self.topology.mget(keys))
        return [ShardState.from_wire(msgpack.unpackb(raw, strict_map_key=False))
                for raw in raws if raw]

    def recent_transitions(self, count: int) -> list[dict[str, object]]:
        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.shards):
                pipe.xrevrange(f"{self._tag(shard)}:transitions", count=count)
            return pipe.execute()

        records = [_transition_from_fields(fields) for entries in self._call("read_state", read)
                   for _, fields in entries]
        records.sort(key=lambda r: -float(r["at"]))  # type: ignore[arg-type]
        return records[:count]

    def customer_transitions(self, customer_id: str, count: int) -> list[dict[str, object]]:
        # Not load_customers: it tells commit what the next commit's customers were.
        [state] = self._read_customers([customer_id])
        stream = f"{self._tag(shard_of(customer_id, self.shards))}:transitions"

        def retained() -> Iterator[dict[str, object]]:
            """The shard's retained transitions, newest first, read 200 at a time."""
            end = "+"
            while True:
                entries = self._call("read_state", lambda e=end: self.client.xrevrange(  # type: ignore[misc]
                    stream, max=e, count=200))
                for _, fields in entries:
                    yield _transition_from_fields(fields)
                if len(entries) < 200:
                    return
                end = "(" + entries[-1][0].decode()

        return history_records(customer_id, state, count, retained())

    def add_dead_letters(self, records: Sequence[Mapping[str, object]]) -> list[bool]:
        if not records:
            return []
        stream, offsets = self.topology.dead_letter_keys(self.prefix)
        max_age = self.layout.dead_letters_max_age
        oldest_kept = (f"{max(int((time.time() - max_age) * 1000), 0)}" if max_age > 0
                       else "0")
        # Several script calls in one pipeline: each bounded in records and bytes.
        chunks: list[list[bytes | str | int]] = []
        args: list[bytes | str | int] = []
        count = size = 0
        for record in records:
            if not args or count >= DEAD_LETTERS_PER_SCRIPT or \
                    size >= DEAD_LETTER_BYTES_PER_SCRIPT:
                args = [self.layout.dead_letters_kept, oldest_kept, repr(time.time())]
                chunks.append(args)
                count = size = 0
            lane, offset = dead_letter_position(record)
            fields = [(k, v if isinstance(v, bytes) else str(v)) for k, v in record.items()
                      if v is not None and v != ""]
            args += [lane, f"{offset:020d}" if lane else "", len(fields)]
            for key, value in fields:
                args += [key, value]
                size += len(value)
            count += 1
        node = self.topology.node_for(stream)
        script = node.register_script(_ADD_DEAD_LETTERS)

        def write() -> list[bool]:
            pipe = node.pipeline(transaction=False)
            for args in chunks:
                script(keys=[stream, offsets, f"{stream}:committed_at"], args=args,
                       client=pipe)
            return [bool(flag) for reply in pipe.execute() for flag in reply]

        # A retry after a lost reply finds its records written: the high-water mark makes the
        # script idempotent (they are then reported as not new).
        return self._call("dead_letter", write)

    def dead_letter_commit_times(self) -> dict[str, float]:
        """Per source partition (``redis:<stream>``, ...), the wall clock of the last
        dead-letter write that held one of its entries (``churnwatch status``: a batch of dead
        letters only is its partition's commit although no shard commits)."""
        stream, _ = self.topology.dead_letter_keys(self.prefix)
        fields = self._call("read_state", lambda: self.client.hgetall(f"{stream}:committed_at"))
        return {k.decode(): float(v) for k, v in fields.items()}

    def dead_letters(self, count: int) -> list[dict[str, object]]:
        stream, _ = self.topology.dead_letter_keys(self.prefix)
        entries = self._call("read_state", lambda: self.client.xrevrange(stream, count=count))
        return [{k.decode(): v.decode(errors="replace") for k, v in fields.items()}
                for _, fields in entries]

    def customer_count(self) -> int:
        return sum(int(value) for s in self.shard_states() for key, value in s.gauges.items()
                   if isinstance(key, ScoredCustomers))

    def memory_bytes(self) -> int:
        """Redis ``used_memory``."""
        return self._call("scrape", self.topology.used_memory)

    def close(self) -> None:
        self.client.close()


class CommittedPositions(NamedTuple):
    """What one shard has committed: the highest offset processed per source partition id,
    and when (wall clock; ``None`` if unknown)."""

    offsets: dict[int, int]
    committed_at: float | None


def _positions(fields: Mapping[bytes, bytes]) -> dict[int, int]:
    return {int(k): int(v) for k, v in fields.items() if k.isdigit()}


def _transition_from_fields(fields: Mapping[bytes, bytes]) -> dict[str, object]:
    record: dict[str, object] = {}
    for key, value in fields.items():
        name = key.decode()
        text = value.decode()
        if name == "reasons":
            record[name] = json.loads(text)
        elif name in ("old_score", "new_score", "at"):
            record[name] = float(text)
        elif name == "holdout":
            record[name] = text == "True"
        else:
            record[name] = text
    record.setdefault("old_score", None)
    return record


def _decode_into(blob: bytes, table: CustomerTable, key: str) -> None:
    """A bucket's checkpoint into ``table``; a damaged one stops the reader with its key."""
    try:
        decode_rows(blob, table)
    except ValueError as exc:
        raise ValueError(f"the Redis key {key!r}: {exc}") from exc


def _merged(key: str, blob: bytes | None, states: Iterable[tuple[str, CustomerState]]
            ) -> bytes:
    """:func:`~churnwatch.state.checkpoint.with_states`; a damaged checkpoint named by key."""
    try:
        return with_states(blob, states)[0]
    except ValueError as exc:
        raise ValueError(f"the Redis key {key!r}: {exc}") from exc


def _decode_states(blobs: Sequence[tuple[str, bytes]]) -> list[tuple[str, CustomerState]]:
    try:
        return decode_states([blob for _, blob in blobs])
    except ValueError:
        for key, blob in blobs:  # name the damaged one
            _decode_into(blob, CustomerTable(), key)
        raise
