"""The pipeline metrics: what this process did (events read, scored, dead-lettered, latency,
lag, Redis round trips), as ordinary prometheus_client metrics, updated by the dataflow through
the :class:`~churnwatch.core.records.FlowHooks` callbacks and by the Redis store through the
:class:`~churnwatch.state.redis_store.RedisObserver` callbacks (docs/metrics.md).

The business metrics read from the store at scrape time are :mod:`churnwatch.metrics.business`;
the server that serves both on ``/metrics`` is :mod:`churnwatch.web.server`. The registry is
always passed in, so tests use a fresh one:

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> metrics = PipelineMetrics(registry, process_collector=False)
>>> metrics.set_source_lag("redis", seconds=2.5, messages=10)
>>> registry.get_sample_value("churnwatch_source_lag_messages", {"source": "redis"})
10.0
>>> registry.get_sample_value("churnwatch_events_received_total", {"source": "kafka"})
0.0
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from churnwatch.core.events import DEAD_LETTER_REASONS, InvalidEvent
from churnwatch.core.records import BatchResult, FlowHooks, TierTransition

log = logging.getLogger("churnwatch.metrics")

#: Label values of ``source``, created at 0 from the start.
SOURCES = ("file", "redis", "kafka", "simulator")
#: Label values of ``operation`` (Redis calls), created at 0 from the start.
REDIS_OPERATIONS = ("read_state", "write_state", "due_index", "source_read", "dead_letter",
                    "scrape")

# From a message read to its effect committed: milliseconds when live, minutes for a backlog.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)
# One batched Redis call: sub-millisecond on loopback, seconds when Redis struggles.
ROUNDTRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0)


def churnwatch_version() -> str:
    """The installed churnwatch version (``unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("churnwatch")
    except metadata.PackageNotFoundError:
        return "unknown"


class PipelineMetrics(FlowHooks):
    """This process's pipeline metrics; the dataflow's hooks and the Redis store's observer.

    Every bounded label combination (source x reason, operation) exists at 0 from the start, so
    ``rate()`` and ``increase()`` see the first event, for the ``sources`` this process reads
    (``churnwatch run`` passes its one source; default: all of :data:`SOURCES`). A source used
    without being named gets its series at its first event. The timestamp gauges are the exception:
    ``churnwatch_last_commit_timestamp_seconds`` and
    ``churnwatch_last_scored_event_timestamp_seconds`` appear for a source once it is read
    (a timestamp of 0 would read as "last commit 55 years ago" for sources this process never
    uses). Until the first commit, the last-commit time of a source that has been read is the
    time this object was made, so a pipeline that reads but never commits still looks stalled.

    Called from the dataflow's worker threads, the store's callers and the scrape thread:
    prometheus_client's metrics are thread-safe, and the two "newest" gauges take a lock.
    """

    def __init__(self, registry: CollectorRegistry, *, process_collector: bool = True,
                 version: str | None = None, sources: Sequence[str] = SOURCES) -> None:
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"unknown sources {unknown}; expected some of {', '.join(SOURCES)}")
        self.registry = registry
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._newest_event: dict[str, float] = {}
        self._seen_sources: set[str] = set()

        self.events_received = Counter(
            "churnwatch_events_received_total", "Raw messages read from the source.",
            ["source"], registry=registry)
        self.events_scored = Counter(
            "churnwatch_events_scored_total",
            "Events applied to a customer's state and scored.", ["source"], registry=registry)
        self.events_dead_letter = Counter(
            "churnwatch_events_dead_letter_total", "Events sent to the dead-letter output.",
            ["source", "reason"], registry=registry)
        self.events_late = Counter(
            "churnwatch_events_late_total",
            "Events older than their customer's latest event (applied).", ["source"],
            registry=registry)
        self.events_duplicate = Counter(
            "churnwatch_events_duplicate_total",
            "Events already applied (same event id or source offset), skipped.", ["source"],
            registry=registry)
        self.silent_rescores = Counter(
            "churnwatch_silent_rescores_total",
            "Customers re-scored by the due-time index because time passed without events.",
            registry=registry)
        self.processing_latency = Histogram(
            "churnwatch_processing_latency_seconds",
            "From a message being read to its effect committed in Redis (oldest message of a "
            "batch).", ["source"], buckets=LATENCY_BUCKETS, registry=registry)
        self.last_scored_event = Gauge(
            "churnwatch_last_scored_event_timestamp_seconds",
            "Event time (ts) of the newest scored event.", ["source"], registry=registry)
        self.last_commit = Gauge(
            "churnwatch_last_commit_timestamp_seconds",
            "Wall-clock time of the last state commit to Redis.", ["source"], registry=registry)
        self.source_lag_seconds = Gauge(
            "churnwatch_source_lag_seconds",
            "Wall-clock age of the newest message read from the source.", ["source"],
            registry=registry)
        self.source_lag_messages = Gauge(
            "churnwatch_source_lag_messages", "Messages in the source not yet read.",
            ["source"], registry=registry)
        self.redis_errors = Counter(
            "churnwatch_redis_errors_total", "Failed Redis calls (each retry counts).",
            ["operation"], registry=registry)
        self.redis_roundtrip = Histogram(
            "churnwatch_redis_roundtrip_seconds", "Redis round-trip time per batched call.",
            ["operation"], buckets=ROUNDTRIP_BUCKETS, registry=registry)
        self.build_info = Gauge(
            "churnwatch_build_info", "Always 1; the version of churnwatch serving these metrics.",
            ["version"], registry=registry)
        self.build_info.labels(version or churnwatch_version()).set(1)

        for source in sources:
            self.events_received.labels(source)
            self.events_scored.labels(source)
            self.events_late.labels(source)
            self.events_duplicate.labels(source)
            self.processing_latency.labels(source)
            self.source_lag_seconds.labels(source)
            self.source_lag_messages.labels(source)
            for reason in DEAD_LETTER_REASONS:
                self.events_dead_letter.labels(source, reason)
        for operation in REDIS_OPERATIONS:
            self.redis_errors.labels(operation)
            self.redis_roundtrip.labels(operation)
        if process_collector:
            ProcessCollector(registry=registry)

    # -- FlowHooks (called by the dataflow's worker threads) -----------------------------------

    def decoded(self, source: str, received: int, invalid: Sequence[InvalidEvent],
                newest_published_at: float | None) -> None:
        """A batch of ``received`` raw messages was decoded (its dead letters are counted once
        written, in :meth:`dead_lettered`: a resume may decode them again)."""
        self._see(source)
        self.events_received.labels(source).inc(received)
        if newest_published_at is not None:
            self.source_lag_seconds.labels(source).set(
                max(time.time() - newest_published_at, 0.0))

    def committed(self, source: str, result: BatchResult, oldest_received_at: float) -> None:
        """A shard batch (events, or silent customers due for review) was committed."""
        self._see(source)
        now = time.time()
        self.last_commit.labels(source).set(now)
        if result.scored:
            self.events_scored.labels(source).inc(result.scored)
        if result.late:
            self.events_late.labels(source).inc(result.late)
        if result.duplicates:
            self.events_duplicate.labels(source).inc(result.duplicates)
        if result.rescored_silent:
            self.silent_rescores.inc(result.rescored_silent)
        # A review of silent customers reads no message: it has no latency to report.
        if result.scored or result.duplicates or result.dead_letters:
            self.processing_latency.labels(source).observe(max(now - oldest_received_at, 0.0))
        if result.last_event_ts > 0:
            with self._lock:
                if result.last_event_ts > self._newest_event.get(source, 0.0):
                    self._newest_event[source] = result.last_event_ts
                    self.last_scored_event.labels(source).set(result.last_event_ts)

    def dead_lettered(self, source: str, items: Sequence[InvalidEvent]) -> None:
        """Dead letters written for the first time (each source position once, across
        restarts), from the decoder and the engine's ``too_late``. Writing them is a commit
        too: a batch of dead letters only commits no shard, and must not look stalled."""
        self._see(source)
        self.last_commit.labels(source).set(time.time())
        for item in items:
            self.events_dead_letter.labels(source, item.reason).inc()

    def transitions(self, transitions: Sequence[TierTransition]) -> None:
        """Tier transitions are counted from Redis at scrape time, not here (see
        :class:`BusinessCollector`): one process sees only its own shards."""

    # -- sources --------------------------------------------------------------------------------

    def set_source_lag(self, source: str, seconds: float | None = None,
                       messages: float | None = None) -> None:
        """Called by a source after a read: the newest message's age and what is left to read.
        ``None`` leaves a value as it is."""
        self._see(source)
        if seconds is not None:
            self.source_lag_seconds.labels(source).set(max(float(seconds), 0.0))
        if messages is not None:
            self.source_lag_messages.labels(source).set(max(float(messages), 0.0))

    # -- RedisObserver (called by the store, from any thread) ---------------------------------

    def roundtrip(self, operation: str, seconds: float) -> None:
        """A Redis call of ``operation`` took ``seconds``."""
        self.redis_roundtrip.labels(operation).observe(seconds)

    def error(self, operation: str, exc: BaseException) -> None:
        """A Redis call of ``operation`` failed (the store retries it)."""
        self.redis_errors.labels(operation).inc()

    def _see(self, source: str) -> None:
        if source in self._seen_sources:
            return
        with self._lock:
            if source not in self._seen_sources:
                self._seen_sources.add(source)
                self.last_commit.labels(source).set(self.started_at)


