"""Prometheus metrics of churnwatch, and the HTTP server that serves them with the worklist API.

Two kinds of metrics, as docs/metrics.md lays out:

- :class:`PipelineMetrics`: what this process did (events read, scored, dead-lettered, latency,
  lag, Redis round trips). Ordinary prometheus_client metrics, updated by the dataflow through
  the :class:`~churnwatch.dataflows.flow.FlowHooks` callbacks and by the Redis store through the
  :class:`~churnwatch.state.redis_store.RedisObserver` callbacks.
- :class:`BusinessCollector`: customers per tier, score distribution, transitions... read from
  the shards' aggregates in Redis at scrape time (one MGET), so every process that serves
  ``/metrics`` reports the same, complete values whatever shards it owns.

:func:`start_metrics_server` serves both on ``/metrics`` beside the customer-success worklist
(:mod:`churnwatch.metrics.worklist`). The registry is always passed in, so tests use a fresh one:

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

import gzip
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from churnwatch.metrics.pages import WorkbenchPages, safe_next
from churnwatch.metrics.worklist import WorklistAPI, winback_report
from churnwatch.state.base import StateStore, config_with_segments
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from churnwatch.core.aggregates import (
    CounterKey,
    GaugeKey,
    RecoveryCount,
    SegmentKeys,
    SuddenDropCount,
    TransitionCount,
    merge_shards,
)
from churnwatch.core.config import COMPONENTS, TIERS, ChurnwatchConfig, ConfigError
from churnwatch.core.events import DEAD_LETTER_REASONS, InvalidEvent
from churnwatch.core.records import BatchResult, FlowHooks, ShardState, TierTransition

log = logging.getLogger("churnwatch.metrics")

#: Label values of ``source``, created at 0 from the start.
SOURCES = ("file", "redis", "kafka", "simulator")
#: Label values of ``operation`` (Redis calls), created at 0 from the start.
REDIS_OPERATIONS = ("read_state", "write_state", "due_index", "source_read", "dead_letter",
                    "scrape")
#: Tiers a customer can recover from (back to ``healthy``).
RECOVERABLE_TIERS = ("at_risk", "churned")

# From a message read to its effect committed: milliseconds when live, minutes for a backlog.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)
# One batched Redis call: sub-millisecond on loopback, seconds when Redis struggles.
ROUNDTRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0)

# How long a scrape, or an API request, keeps retrying Redis before it gives up (and the scrape
# leaves the business families out, the request answers 503).
SCRAPE_MAX_WAIT_SECONDS = 1.0
API_MAX_WAIT_SECONDS = 2.0

API_TOKEN_ENV = "CHURNWATCH_API_TOKEN"
API_TOKEN_FILE_ENV = "CHURNWATCH_API_TOKEN_FILE"


def churnwatch_version() -> str:
    """The installed churnwatch version (``unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("churnwatch")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- pipeline metrics ---------------------------------------------------------------------------


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


# -- business metrics ---------------------------------------------------------------------------


class BusinessCollector:
    """Customer metrics read from the shards' aggregates in Redis at every scrape.

    ``store`` is used as given (a factory passed in its place is taken as ``store_factory``);
    ``store_factory`` is called once, at the first scrape, and the store it returns is this
    collector's own: its retries are bounded by ``max_wait`` seconds and reported to
    ``observer`` as operation ``scrape``, so a scrape while Redis is down returns quickly.
    Then the business families are left out of that scrape and the rest of ``/metrics`` is
    served as usual: Prometheus marks the business series stale (a gap in the dashboards) while
    ``churnwatch_redis_errors_total{operation="scrape"}`` and the platform alerts tell why. A
    failure the store does not count itself is counted here.
    """

    def __init__(self, store: StateStore | Callable[[], StateStore] | None = None,
                 config: ChurnwatchConfig | None = None,
                 *, store_factory: Callable[[], StateStore] | None = None,
                 observer: PipelineMetrics | None = None,
                 max_wait: float = SCRAPE_MAX_WAIT_SECONDS) -> None:
        if store is not None and store_factory is None and not hasattr(store, "shard_states"):
            store, store_factory = None, store  # given a factory positionally
        if (store is None) == (store_factory is None):
            raise ValueError("BusinessCollector needs exactly one of store or store_factory")
        self.config = config or ChurnwatchConfig()
        self.observer = observer
        self.max_wait = max_wait
        self._store = store
        self._factory = store_factory
        self._lock = threading.Lock()

    def _get_store(self) -> StateStore:
        with self._lock:
            if self._store is None:
                assert self._factory is not None
                self._store = own_store(self._factory, self.observer, self.max_wait)
            return self._store

    def close(self) -> None:
        """Close the store if this collector made it."""
        with self._lock:
            if self._factory is not None and self._store is not None:
                self._store.close()
                self._store = None

    def describe(self) -> Iterable[Metric]:
        """The families' names, for the registry's duplicate check, without reading Redis."""
        return list(self._families(None, None))

    def collect(self) -> Iterable[Metric]:
        """Called by the registry at every scrape, in the scrape's thread."""
        try:
            store = self._get_store()
            shards = store.shard_states()
            # The shop's own segments kept so far are labels too (bounded by the store).
            config = config_with_segments(store, self.config)
            memory_of = getattr(store, "memory_bytes", None)
            memory = memory_of() if memory_of is not None else None
        except Exception as exc:  # noqa: BLE001 - a scrape must survive anything Redis does
            log.warning("scrape: cannot read the shard aggregates from Redis: %s", exc)
            if self.observer is not None and not _counted_by_store(exc):
                self.observer.error("scrape", exc)
            return []
        return list(self._families(shards, memory, config))

    def _families(self, shards: list[ShardState] | None, memory: int | None,
                  config: ChurnwatchConfig | None = None) -> Iterator[Metric]:
        config = config or self.config
        segments = config.segments
        # A segment no longer configured (the configuration changed since the aggregate was
        # written) counts as ``other``, so labels stay bounded.
        gauges = merge_shards((shard.gauges for shard in shards or ()), segments)
        counters = merge_shards((shard.counters for shard in shards or ()), segments)

        def g(key: GaugeKey) -> float:
            return gauges.get(key, 0.0)

        def c(key: CounterKey) -> float:
            return counters.get(key, 0.0)

        customers = GaugeMetricFamily(
            "churnwatch_customers", "Customers currently in each tier.",
            labels=["segment", "tier"])
        bands = GaugeMetricFamily(
            "churnwatch_score_band_customers",
            "Customers whose current health score lies in the band (lower bound inclusive).",
            labels=["segment", "band"])
        mean = GaugeMetricFamily(
            "churnwatch_health_score_mean",
            "Mean current health score of the segment's customers (absent when it has none).",
            labels=["segment"])
        components = GaugeMetricFamily(
            "churnwatch_health_component_mean",
            "Mean of each score component (0..100) over the customers where it has data.",
            labels=["segment", "component"])
        transitions = CounterMetricFamily(
            "churnwatch_tier_transitions", "Tier changes of customers.",
            labels=["segment", "from_tier", "to_tier"])
        drops = CounterMetricFamily(
            "churnwatch_sudden_drops",
            "Customers whose score fell by more than [alerts] sudden_drop_points within "
            "sudden_drop_window_days.", labels=["segment"])
        recoveries = CounterMetricFamily(
            "churnwatch_recoveries", "Customers back to healthy from at_risk or churned.",
            labels=["segment", "from_tier"])
        high_value = GaugeMetricFamily(
            "churnwatch_high_value_at_risk_customers",
            "Customers of the top value tier now in at_risk or churned.", labels=["segment"])
        objective = GaugeMetricFamily(
            "churnwatch_churn_rate_objective_ratio",
            "Configured objective for the share of active customers turning churned per 30 "
            "days.", labels=["segment"])
        state_customers = GaugeMetricFamily(
            "churnwatch_state_customers", "Customers held in the Redis state.")
        redis_memory = GaugeMetricFamily(
            "churnwatch_redis_memory_bytes", "Redis used_memory.")
        winback = self._winback_families(shards)
        if shards is None:  # describe()
            yield from (customers, bands, mean, components, transitions, drops, recoveries,
                        high_value, objective, state_customers, redis_memory, *winback)
            return

        total = 0.0
        for segment in segments:
            keys = SegmentKeys(segment)
            for tier, key in zip(TIERS, keys.tiers, strict=True):
                customers.add_metric([segment, tier], round(g(key)))
            for key in keys.bands:
                bands.add_metric([segment, key.band], round(g(key)))
            scored = round(g(keys.scored))
            total += scored
            if scored > 0:
                mean.add_metric([segment], g(keys.score_sum) / scored)
            for name, count, value in zip(COMPONENTS, keys.component_counts,
                                          keys.component_sums, strict=True):
                n = round(g(count))
                if n > 0:
                    components.add_metric([segment, name], g(value) / n)
            for old in TIERS:
                for new in TIERS:
                    if old != new:
                        transitions.add_metric([segment, old, new],
                                               c(TransitionCount(segment, old, new)))
            drops.add_metric([segment], c(SuddenDropCount(segment)))
            for old in RECOVERABLE_TIERS:
                recoveries.add_metric([segment, old], c(RecoveryCount(segment, old)))
            high_value.add_metric([segment], round(g(keys.high_value_at_risk)))
            objective.add_metric([segment], config.policy(segment).churn_rate_objective)
        state_customers.add_metric([], total)
        yield from (customers, bands, mean, components, transitions, drops, recoveries,
                    high_value, objective, state_customers, *winback)
        if memory is not None:
            redis_memory.add_metric([], float(memory))
            yield redis_memory


    def _winback_families(self, shards: list[ShardState] | None) -> list[Metric]:
        """Win-back per playbook and group (``treated``, ``holdout``): labels bounded by the
        configured playbooks (docs/metrics.md)."""
        assigned = CounterMetricFamily(
            "churnwatch_winback_assigned", "Customers a playbook was assigned to, per group "
            "(treated: suggestion shown; holdout: withheld, the control group).",
            labels=["playbook", "group"])
        contacted = CounterMetricFamily(
            "churnwatch_winback_contacted", "Assigned customers with an intervention event "
            "after the assignment.", labels=["playbook", "group"])
        recovered = CounterMetricFamily(
            "churnwatch_winback_recovered", "Assigned customers who ordered again or were back "
            "to healthy within [winback] window_days.", labels=["playbook", "group"])
        rate = GaugeMetricFamily(
            "churnwatch_winback_recovery_ratio", "Recovered over assigned customers, per "
            "playbook and group (absent while a group is empty).", labels=["playbook", "group"])
        uplift = GaugeMetricFamily(
            "churnwatch_winback_uplift_ratio", "Treated minus hold-out recovery rate, with the "
            "bounds of Newcombe's 95% interval (absent while a group is empty).",
            labels=["playbook", "bound"])
        families: list[Metric] = [assigned, contacted, recovered, rate, uplift]
        if shards is None:
            return families
        for entry in winback_report(shards, self.config):
            name = entry["playbook"]
            for group in ("treated", "holdout"):
                numbers = entry[group]
                assigned.add_metric([name, group], numbers["assigned"])
                contacted.add_metric([name, group], numbers["contacted"])
                recovered.add_metric([name, group], numbers["recovered"])
                if numbers["recovery_rate"] is not None:
                    rate.add_metric([name, group], numbers["recovery_rate"])
            if entry["uplift"] is not None:
                low, high = entry["uplift"]["interval"]
                uplift.add_metric([name, "estimate"], entry["uplift"]["difference"])
                uplift.add_metric([name, "low"], low)
                uplift.add_metric([name, "high"], high)
        return families


def _counted_by_store(exc: BaseException) -> bool:
    """Whether the Redis store already reported this failure to its observer (it does for the
    connection errors it retries)."""
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                            redis.ReadOnlyError))


def own_store(factory: Callable[[], StateStore], observer: PipelineMetrics | None,
              max_wait: float | None) -> StateStore:
    """A store from ``factory`` for the server's own use: its retries bounded by ``max_wait``
    seconds (a request must not hang while Redis is down) and reported to ``observer``."""
    store = factory()
    if hasattr(store, "max_wait"):
        store.max_wait = max_wait
    if observer is not None and hasattr(store, "observer"):
        store.observer = observer
    return store


# -- HTTP server --------------------------------------------------------------------------------


def api_token_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The worklist API's bearer token: ``$CHURNWATCH_API_TOKEN``, else the first line of the
    file named by ``$CHURNWATCH_API_TOKEN_FILE``, else ``None`` (no token required). A named
    file that is missing or empty is a :class:`ConfigError` (the command exits with code 2),
    never a silently open API."""
    env = os.environ if environ is None else environ
    token = env.get(API_TOKEN_ENV)
    if token:
        return token.strip()
    path = env.get(API_TOKEN_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{API_TOKEN_FILE_ENV}={path}: cannot read the API token: "
                              f"{exc.strerror}") from None
        if not text:
            raise ConfigError(f"{API_TOKEN_FILE_ENV}={path}: the file is empty")
        return text.splitlines()[0].strip()
    return None


class MetricsServer:
    """A running metrics and worklist server; :meth:`shutdown` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread,
                 registry: CollectorRegistry, collector: BusinessCollector | None,
                 api: WorklistAPI) -> None:
        self._httpd = httpd
        self._thread = thread
        self._registry = registry
        self._collector = collector
        self._api = api
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving, wait for the serving thread, unregister the collector, close stores."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
        if self._collector is not None:
            try:
                self._registry.unregister(self._collector)
            except KeyError:
                pass
            self._collector.close()
        self._api.close()


def start_metrics_server(host: str | None, port: int, config: ChurnwatchConfig,
                         store_factory: Callable[[], StateStore], registry: CollectorRegistry,
                         pipeline_metrics: PipelineMetrics | None,
                         serve_business: bool = True, api_token: str | None = None
                         ) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and the worklist API (``/api/v1/...``) in a thread.

    ``host`` defaults to 127.0.0.1; ``port`` 0 picks a free port (see ``.port``).
    ``serve_business`` registers a :class:`BusinessCollector` on ``registry``; turn it off in
    all but one of several processes that share a Prometheus job if their scrapes should not
    read Redis. ``api_token`` (default: :func:`api_token_from_env`; ``""``: none) makes the API
    require ``Authorization: Bearer <token>``. Without a token, and ``host`` beyond loopback,
    the API answers 403 to clients that do not connect from this host: it would hand customer
    data to the network. ``/metrics`` and ``/healthz`` stay open: they carry no customer data,
    and Prometheus then needs no secret (see docs/worklist.md).

    Called by ``churnwatch run`` once at start, before the dataflow; ``shutdown()`` on exit.
    """
    host = host or "127.0.0.1"
    token = api_token if api_token is not None else api_token_from_env()
    api_off = not token and not _is_loopback(host)
    if api_off:
        log.warning("no API token is set (%s or %s): the worklist API on %s:%s answers local "
                    "clients only; /metrics and /healthz answer everyone", API_TOKEN_ENV,
                    API_TOKEN_FILE_ENV, host, port)
    collector = None
    if serve_business:
        collector = BusinessCollector(config=config, store_factory=store_factory,
                                      observer=pipeline_metrics)
        registry.register(collector)
    api = WorklistAPI(config, lambda: own_store(store_factory, pipeline_metrics,
                                                API_MAX_WAIT_SECONDS))
    handler = _make_handler(registry, api, token or None, api_off)
    try:
        httpd = (_ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer)(
            (host, port), handler)
    except OSError:
        if collector is not None:
            registry.unregister(collector)
        raise
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="churnwatch-metrics-http",
                              daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread, registry, collector, api)
    log.info("serving /metrics and the worklist API on %s", server.url)
    return server


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: The browser session cookie set by ``POST /login``: an HMAC of the token, never the token.
SESSION_COOKIE = "churnwatch_session"
#: What the pages may load: nothing but their own inline styles and SVG.
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def session_value(token: str) -> str:
    """The session cookie's value for a token (so the cookie never carries the token)."""
    return hmac.new(token.encode(), b"churnwatch browser session", hashlib.sha256).hexdigest()


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _make_handler(registry: CollectorRegistry, api: WorklistAPI, token: str | None,
                  api_off: bool) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode() if token else None
    session = session_value(token).encode() if token else None
    pages = WorkbenchPages(api)

    class Handler(BaseHTTPRequestHandler):
        server_version = "churnwatch"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            path = parts.path
            if path == "/metrics":
                self._metrics()
                return
            if path.startswith("/api/") and api_off and not _is_loopback(
                    str(self.client_address[0])):
                self._json(403, {"error": "the worklist API answers only local clients when "
                                 f"no token is set; set {API_TOKEN_ENV} or {API_TOKEN_FILE_ENV}"})
                return
            if not path.startswith("/api/") and path != "/healthz":
                self._page(path, parts.query)
                return
            if path.startswith("/api/") and expected is not None:
                if not self._authorized():
                    self._json(401, {"error": "missing or wrong bearer token",
                                     "parameter": "Authorization"},
                               {"WWW-Authenticate": 'Bearer realm="churnwatch"'})
                    return
            status, body = api.handle(path, parts.query)
            self._json(status, body)

        def do_HEAD(self) -> None:  # noqa: N802
            self._json(405, {"error": "use GET"}, {"Allow": "GET"})

        def do_POST(self) -> None:  # noqa: N802
            if urlsplit(self.path).path == "/login":
                self._login()
                return
            self._json(405, {"error": "use GET"}, {"Allow": "GET"})

        def do_PUT(self) -> None:  # noqa: N802
            self._json(405, {"error": "use GET"}, {"Allow": "GET"})

        do_DELETE = do_PATCH = do_PUT  # noqa: N815

        def _authorized(self) -> bool:
            """A bearer token (API clients) or the session cookie (browsers)."""
            if expected is None or session is None:
                return True
            given = self.headers.get("Authorization", "").encode()
            if hmac.compare_digest(given, expected):
                return True
            cookie = _cookie(self.headers.get("Cookie", ""), SESSION_COOKIE) or ""
            return hmac.compare_digest(cookie.encode(), session)

        def _page(self, path: str, query: str) -> None:
            if api_off and not _is_loopback(str(self.client_address[0])):
                self._html(403, pages.error("Local clients only", "No API token is set, so the "
                                            f"pages answer only this host; set {API_TOKEN_ENV} "
                                            f"or {API_TOKEN_FILE_ENV}."))
                return
            if path != "/login" and not self._authorized():
                target = path + (f"?{query}" if query else "")
                self._send(303, b"", {"Location": "/login?next=" + quote(target, safe="")})
                return
            status, body = pages.handle(path, query)
            self._html(status, body)

        def _login(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), 8192)
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            given = (form.get("token") or [""])[0]
            next_path = safe_next((form.get("next") or ["/"])[0])
            if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
                log.warning("pages: wrong token from %s", self.address_string())
                self._html(401, pages.login(next_path, "Wrong token."))
                return
            headers = {"Location": next_path}
            if token is not None:
                headers["Set-Cookie"] = (f"{SESSION_COOKIE}={session_value(token)}; HttpOnly; "
                                         "SameSite=Strict; Path=/; Max-Age=43200")
            self._send(303, b"", headers)

        def _html(self, status: int, body: str) -> None:
            self._send(status, body.encode(), PAGE_HEADERS)

        def _metrics(self) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                output = encoder(registry)
            except Exception:  # noqa: BLE001 - answer 500 and keep serving
                log.exception("scrape failed")
                self._json(500, {"error": "scrape failed, see the churnwatch log"})
                return
            headers = {"Content-Type": content_type}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                output = gzip.compress(output)
                headers["Content-Encoding"] = "gzip"
            self._send(200, output, headers)

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body, indent=None, separators=(",", ":")).encode()
            self._send(status, data, {"Content-Type": "application/json", **(headers or {})})

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
