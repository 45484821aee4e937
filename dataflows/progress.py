"""How far each source partition has been read, for the live time rule.

A live monitor judges a silent customer by the wall clock only once its source has caught up
(docs/operations.md, "One time rule"): before that, the events still waiting in the stream may
be the customer's next order, and a review by the wall clock would judge history a year late.
The source partitions of a process report every read here; the shard that scores a
partition's events asks :meth:`SourceProgress.caught_up` before it reviews anyone by the clock.

One object per process, shared by the source partitions (which write) and the shards (which
read) of every worker thread: each partition is read by one worker, and Bytewax routes a shard
to the worker that reads its partition (``dataflows/routing.py``), so the shard finds its
partition here. A partition this process does not read is not known here
(:meth:`SourceProgress.caught_up` answers ``None``) and the shard judges from its own batches.

>>> progress = SourceProgress()
>>> progress.register("events:0", now=90.0)
>>> progress.caught_up("events:0", settle_seconds=5.0, now=100.0)  # nothing read yet
False
>>> progress.read("events:0", entries=3, full=False, now=100.0)
>>> progress.caught_up("events:0", settle_seconds=5.0, now=102.0)  # read to its end, not quiet
False
>>> progress.caught_up("events:0", settle_seconds=5.0, now=106.0)
True
>>> progress.caught_up("events:0", settle_seconds=5.0, now=102.0, current=True)
True
>>> progress.caught_up("events:1", settle_seconds=5.0, now=106.0) is None
True
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(slots=True)
class PartitionProgress:
    """The last read of one partition: whether it reached the end of what was there, and
    since when no read has brought entries (the partition's build when none has)."""

    quiet_since: float
    at_end: bool = False
    read_once: bool = False


class SourceProgress:
    """Per source partition (by the name Bytewax knows it under: a stream key, ``n-topic``),
    the last read; thread-safe."""

    def __init__(self) -> None:
        self._parts: dict[str, PartitionProgress] = {}
        self._lock = threading.Lock()

    def register(self, partition: str, now: float) -> None:
        """Called by a source when Bytewax builds the partition in this process (at start and
        on resume): known here, not yet read."""
        with self._lock:
            self._parts[partition] = PartitionProgress(now)

    def read(self, partition: str, entries: int, full: bool, now: float) -> None:
        """Called by the partition after every successful read of ``entries`` entries; ``full``
        when the read returned as many as it asked for (more may be waiting)."""
        with self._lock:
            part = self._parts.setdefault(partition, PartitionProgress(now))
            part.at_end = not full
            part.read_once = True
            if entries:
                part.quiet_since = now

    def caught_up(self, partition: str, settle_seconds: float, now: float,
                  current: bool = False) -> bool | None:
        """Whether the partition's last read reached its end and either its events are
        ``current`` (the caller says: the newest is near the wall clock) or no read has
        brought entries for ``settle_seconds``. ``None`` when this process does not read the
        partition."""
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                return None
            if not (part.read_once and part.at_end):
                return False
            return current or now - part.quiet_since >= settle_seconds
