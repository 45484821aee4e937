"""Redis Streams as a replayable Bytewax source: one partition per stream.

Publishers (``churnwatch publish``, :class:`churnwatch.publish.Publisher`) append events to the
streams ``{stream_prefix}:{p}`` for ``p`` in ``range(stream_partitions)``, each entry holding the
encoded event (JSON or msgpack) in its field ``e``. Every stream is a partition of this source.

Entries are read with plain ``XREAD`` from the last id read, not with consumer groups: the
snapshot Bytewax keeps for a partition *is* that id, so a resumed flow reads on exactly from its
last snapshot, and nothing needs acknowledging in Redis. Entries read twice around a resume are
harmless, because the engine remembers the last offset applied per customer and partition.

``XREAD`` is sent without ``BLOCK``: a worker owns several partitions and other steps, so an
empty stream must not hold its thread. When a stream has nothing new the partition asks Bytewax
to come back a few milliseconds later (``next_awake``). When Redis cannot be reached the
partition logs, reports to the observer and backs off (up to five seconds), returning empty
batches meanwhile: the flow waits for Redis instead of crashing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from churnwatch.dataflows.messages import RawMessage
from churnwatch.dataflows.progress import SourceProgress
from churnwatch.state.cluster import redis_client
from churnwatch.state.connection import is_lost_connection

log = logging.getLogger("churnwatch.redis_source")

PAYLOAD_FIELD = b"e"
MAX_BACKOFF_SECONDS = 5.0
_SEQ_SPAN = 1_000_000


class SourceObserver(Protocol):
    """Told about reads and failures (``churnwatch.state.redis_store.RedisObserver`` fits)."""

    def roundtrip(self, operation: str, seconds: float) -> None:
        """A read took ``seconds``."""

    def error(self, operation: str, exc: BaseException) -> None:
        """A read failed and will be retried."""


def stream_names(prefix: str, partitions: int) -> list[str]:
    """The stream keys of a configuration, partition order.

    >>> stream_names("churnwatch:events", 2)
    ['churnwatch:events:0', 'churnwatch:events:1']
    """
    return [f"{prefix}:{p}" for p in range(partitions)]


def id_offset(entry_id: str) -> int:
    """A stream entry id as an increasing integer: ``ms * 1_000_000 + seq``.

    Redis gives entries of one stream strictly increasing ids; the integer keeps that order as
    long as a stream holds fewer than a million entries in one millisecond, which ids that Redis
    generates never reach (it appends at most a few hundred thousand entries a second). Only a
    producer choosing its own ids could go beyond: such sequences are clamped (and logged by the
    source), so the engine would take a second entry of that millisecond for a duplicate.

    >>> id_offset("1714557600000-3")
    1714557600000000003
    >>> id_offset("1-999999") < id_offset("2-0")
    True
    """
    ms, _, seq = entry_id.partition("-")
    return int(ms) * _SEQ_SPAN + min(int(seq or 0), _SEQ_SPAN - 1)


class RedisStreamSource(FixedPartitionedSource[RawMessage, str]):
    """Reads the churnwatch event streams; each stream key is a partition.

    ``batch_size`` is XREAD's ``COUNT``. ``stop_at_end`` makes a partition finish when it finds
    its stream exhausted (a backfill, a test); by default partitions tail their streams forever.
    ``start_id`` is where a partition without a snapshot begins (``"0"``: the oldest entry).
    ``lag_reporter`` is called about once a second with the number of entries not yet read in
    the streams this process reads (known once a partition started from the oldest entry or
    caught up with its stream; needs Redis 7 for ``entries-added``). Once ``stop`` is set (a
    clean stop: SIGTERM, Ctrl-C) every partition ends at its next batch, so the flow reaches
    its end normally: the last batches are committed and Bytewax takes a final snapshot.
    ``progress`` hears of every read (whether it reached the stream's end), for the live time
    rule (``dataflows/progress.py``).
    """

    def __init__(self, url: str, streams: Sequence[str], batch_size: int = 5000,
                 poll_interval: float = 0.005, stop_at_end: bool = False, start_id: str = "0",
                 observer: SourceObserver | None = None,
                 lag_reporter: Callable[[int], None] | None = None,
                 client_factory: Callable[[], redis.Redis] | None = None,
                 stop: threading.Event | None = None,
                 progress: SourceProgress | None = None) -> None:
        self.url = url
        self.streams = list(streams)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.stop_at_end = stop_at_end
        self.start_id = start_id
        self.observer = observer
        self.lag_reporter = lag_reporter
        self.client_factory = client_factory
        self.stop = stop
        self.progress = progress
        self._lags: dict[str, int] = {}
        self._lags_lock = threading.Lock()

    def _report_lag(self, stream: str, entries: int) -> None:
        if self.lag_reporter is None:
            return
        with self._lags_lock:
            self._lags[stream] = entries
            total = sum(self._lags.values())
        self.lag_reporter(total)

    def list_parts(self) -> list[str]:
        """Called by Bytewax on every worker at start: one partition per stream key."""
        return list(self.streams)

    def build_part(self, step_id: str, for_part: str, resume_state: str | None
                   ) -> RedisStreamPartition:
        """Called once per stream on the worker that owns it; ``resume_state`` is the last id
        read as of the snapshot the flow resumes from (``None`` on a fresh start)."""
        client = (self.client_factory() if self.client_factory else
                  redis_client(self.url, socket_connect_timeout=5, socket_timeout=10))
        return RedisStreamPartition(client, for_part, self.batch_size, self.poll_interval,
                                    self.stop_at_end, resume_state or self.start_id,
                                    self.observer,
                                    self._report_lag if self.lag_reporter else None,
                                    self.stop, self.progress)


class RedisStreamPartition(StatefulSourcePartition[RawMessage, str]):
    """One stream: reads on from ``last_id`` (exclusive)."""

    def __init__(self, client: redis.Redis, stream: str, batch_size: int, poll_interval: float,
                 stop_at_end: bool, last_id: str, observer: SourceObserver | None,
                 lag_reporter: Callable[[str, int], None] | None = None,
                 stop: threading.Event | None = None,
                 progress: SourceProgress | None = None) -> None:
        self._client = client
        self._stream = stream
        self._partition = f"redis:{stream}"
        self._batch_size = batch_size
        self._poll = poll_interval
        self._stop_at_end = stop_at_end
        self._last_id = last_id
        self._observer = observer
        self._awake: datetime | None = None
        self._backoff = 0.0
        self._failing_since: float | None = None
        self._lag_reporter = lag_reporter
        self._next_lag_check = 0.0
        # Index of the last entry read among all entries ever added (``entries-added``), once
        # known: from the start of the stream, or after catching up with it.
        self._position: int | None = None
        self._from_oldest = last_id in ("0", "0-0")
        self._read = 0
        self._stop = stop
        self._progress = progress
        if progress is not None:
            progress.register(stream, time.time())

    def next_batch(self) -> list[RawMessage]:
        """Called by Bytewax whenever the worker is free and ``next_awake`` has passed; ends
        the partition (``StopIteration``) once a clean stop is requested."""
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        started = time.perf_counter()
        info: Any = None
        try:
            if self._lag_reporter is not None and time.monotonic() >= self._next_lag_check:
                # One transaction, so nothing is appended between the read and the count.
                pipe = self._client.pipeline(transaction=True)
                pipe.xread({self._stream: self._last_id}, count=self._batch_size)
                pipe.xinfo_stream(self._stream)
                reply, info = pipe.execute(raise_on_error=False)
                if isinstance(reply, Exception):
                    raise reply
                self._next_lag_check = time.monotonic() + 1.0
            else:
                reply = self._client.xread({self._stream: self._last_id},
                                           count=self._batch_size)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if not is_lost_connection(exc):  # a refused login: waiting cannot cure it
                raise
            self._failed(exc)
            return []
        except redis.ResponseError as exc:  # e.g. WRONGTYPE: a configuration error, say where
            raise RuntimeError(f"reading redis stream {self._stream!r}: {exc}") from exc
        if self._observer is not None:
            self._observer.roundtrip("source_read", time.perf_counter() - started)
        if self._failing_since is not None:
            log.warning("redis stream %s readable again after %.1f s", self._stream,
                        time.monotonic() - self._failing_since)
            self._failing_since = None
        self._backoff = 0.0
        entries: list[Any] = reply[0][1] if reply else []
        self._read += len(entries)
        if self._position is not None:
            self._position += len(entries)
        if isinstance(info, dict) and "entries-added" in info:
            self._lag(info, caught_up=len(entries) < self._batch_size)
        if self._progress is not None:
            self._progress.read(self._stream, len(entries), len(entries) >= self._batch_size,
                                time.time())
        if not entries:
            if self._stop_at_end:
                raise StopIteration
            self._awake = _after(self._poll)
            return []
        self._awake = None
        now = time.time()
        batch = []
        partition = self._partition
        stream = self._stream
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            ms, _, seq = entry_id.partition("-")
            sequence = int(seq)
            if sequence >= _SEQ_SPAN:
                log.warning("stream %s entry %s: sequence beyond the offset encoding; entries "
                            "after it in the same millisecond count as duplicates", stream,
                            entry_id)
                sequence = _SEQ_SPAN - 1
            offset = int(ms) * _SEQ_SPAN + sequence
            payload = fields.get(PAYLOAD_FIELD)
            if payload is None:  # not written by a churnwatch publisher: keep what it holds
                payload = json.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                                      for k, v in fields.items()}).encode()
            batch.append(RawMessage(partition, offset, payload, f"{stream}:{entry_id}", now,
                                    int(ms) / 1000.0, "redis"))
        self._last_id = entries[-1][0].decode()
        return batch

    def next_awake(self) -> datetime | None:
        """Called by Bytewax after each batch: when to call :meth:`next_batch` again."""
        return self._awake

    def snapshot(self) -> str:
        """Called by Bytewax at each epoch close: the last id read."""
        return self._last_id

    def close(self) -> None:
        """Called by Bytewax when the partition finishes or the flow stops."""
        self._client.close()

    def _lag(self, info: dict[str, Any], caught_up: bool) -> None:
        added = int(info["entries-added"])
        if caught_up:
            self._position = added
        elif self._position is None and self._from_oldest:
            self._position = added - int(info["length"]) + self._read
        if self._position is not None and self._lag_reporter is not None:
            self._lag_reporter(self._stream, max(added - self._position, 0))

    def _failed(self, exc: BaseException) -> None:
        if self._observer is not None:
            self._observer.error("source_read", exc)
        self._backoff = min(max(self._backoff * 2.0, 0.1), MAX_BACKOFF_SECONDS)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        log.warning("redis stream %s unreadable (%s); retrying in %.1f s", self._stream, exc,
                    self._backoff)
        self._awake = _after(self._backoff)


def _after(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)
