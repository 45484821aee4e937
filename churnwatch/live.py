"""``churnwatch run``: the live monitor, one process of a Bytewax cluster or all of it.

The same dataflow as ``replay`` (``churnwatch.dataflows.flow``) reads the event streams
(Redis Streams by default, a Kafka topic, or the built-in simulator), scores events in event
time and, once the source has caught up, silent customers by the wall clock (one changes tier
when their review time comes; docs/operations.md, "One time rule"), keeps state in Redis, and
serves ``/metrics`` and the worklist API.

Scaling and recovery are Bytewax's: ``--workers`` threads in a process, ``-i/-a`` to join
several processes (on one host or many) into one cluster, ``--recovery-dir`` to resume after a
crash from the last snapshot of the source positions. Redis is the source of truth for state and
every commit is idempotent, so a resume repeats nothing (see docs/operations.md).

Redis: ``--redis-url`` (or $CHURNWATCH_REDIS_URL, or the file named by
$CHURNWATCH_REDIS_URL_FILE) is required with the Redis Streams source: it holds the streams
that ``churnwatch publish`` fills and the state that ``top``, ``explain``, ``export`` and
``status`` read. Only with ``--source kafka`` or ``--source simulator`` and no URL does the
monitor start a private Redis, whose state is discarded when it stops. A refused login stops
at once (exit 2); a Redis that is down is waited for.

Stopping: SIGTERM or Ctrl-C ends every source partition, commits what was read and (with
``--recovery-dir``) takes a final snapshot, so a restart re-reads nothing; exit status 0 after
SIGTERM, 130 after Ctrl-C. A second signal stops at once.
"""

from __future__ import annotations

import fcntl
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from churnwatch.core.config import ChurnwatchConfig

log = logging.getLogger("churnwatch.live")

SOURCES = ("redis", "kafka", "simulator")
CLOCKS = ("wall", "event")


@dataclass
class RunOptions:
    """What ``churnwatch run`` was asked to do (also the Python entry point: :func:`run`)."""

    config: ChurnwatchConfig
    redis_url: str
    source: str
    clock: str = "wall"
    workers: int = 1
    process_id: int | None = None
    addresses: list[str] | None = None
    recovery_dir: str | None = None
    recovery_partitions: int | None = None
    snapshot_interval: float = 5.0
    backup_interval: float = 0.0
    metrics: bool = True
    metrics_host: str | None = None
    metrics_port: int | None = None
    stop_at_end: bool = False
    transitions_path: str | None = None
    dead_letters_path: str | None = None
    simulator_customers: int = 400
    simulator_seed: int = 1
    simulator_days: float = 365.0
    seconds_per_day: float = 0.0
    # Set on a clean stop (SIGTERM, Ctrl-C): every source partition ends at its next batch.
    stop: threading.Event | None = None

    @property
    def total_workers(self) -> int:
        """Workers in the whole cluster."""
        return self.workers * (len(self.addresses) if self.addresses else 1)


def ensure_recovery_partitions(directory: str | Path, count: int) -> bool:
    """Create ``count`` Bytewax recovery partitions in ``directory`` unless it has some.

    Safe when several processes of one cluster start at once on a shared directory: the first
    to take the lock creates them. Returns whether this call created them.
    """
    from bytewax.recovery import init_db_dir

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".churnwatch-init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any(path.glob("part-*.sqlite3")):
            return False
        init_db_dir(path, count)
        log.info("created %d recovery partitions in %s", count, path)
        return True


def build_source(options: RunOptions, metrics: Any = None, progress: Any = None
                 ) -> tuple[Any, str]:
    """The Bytewax source for ``options.source`` and its label for metrics; ``progress`` (a
    ``SourceProgress``) hears of the Redis and Kafka partitions' reads."""
    config = options.config
    if options.source == "redis":
        from churnwatch.dataflows.redis_source import RedisStreamSource, stream_names

        reporter = None
        if metrics is not None and hasattr(metrics, "set_source_lag"):
            def reporter(entries: int) -> None:
                metrics.set_source_lag("redis", messages=entries)

        return RedisStreamSource(options.redis_url,
                                 stream_names(config.stream_prefix, config.stream_partitions),
                                 batch_size=config.batch_size, stop_at_end=options.stop_at_end,
                                 observer=metrics, lag_reporter=reporter,
                                 stop=options.stop, progress=progress), "redis"
    if options.source == "kafka":
        from churnwatch.dataflows.kafka_source import KafkaEventSource

        return KafkaEventSource(config.kafka_brokers, config.kafka_topic,
                                batch_size=config.batch_size,
                                tail=not options.stop_at_end, stop=options.stop,
                                progress=progress), "kafka"
    if options.source == "simulator":
        from churnwatch.dataflows.simulator_source import SimulatorSource
        from churnwatch.simulator import DAY, ShopSimulator

        sim = ShopSimulator(customers=options.simulator_customers, seed=options.simulator_seed,
                            start=time.time() - options.simulator_days * DAY,
                            days=options.simulator_days)
        return SimulatorSource(sim, options.seconds_per_day, batch_size=config.batch_size,
                               stop=options.stop), "simulator"
    raise ValueError(f"unknown source {options.source!r}; expected one of {', '.join(SOURCES)}")


def source_partitions(options: RunOptions) -> tuple[str, ...] | None:
    """The partition names of ``options.source`` in the publisher's order (partition
    ``crc32(customer_id) % P`` at index ``P``), so the flow scores each shard on the worker that
    reads it; ``None`` for the simulator, which is not partitioned by customer.

    >>> source_partitions(RunOptions(ChurnwatchConfig(stream_partitions=2), "", "redis"))
    ('churnwatch:events:0', 'churnwatch:events:1')
    """
    config = options.config
    if options.source == "redis":
        from churnwatch.dataflows.redis_source import stream_names

        return tuple(stream_names(config.stream_prefix, config.stream_partitions))
    if options.source == "kafka":
        # Bytewax's Kafka connector names partitions "<n>-<topic>"; the topic has
        # stream_partitions of them (docs/operations.md). Another count only costs locality.
        return tuple(f"{n}-{config.kafka_topic}" for n in range(config.stream_partitions))
    return None


#: What the metrics port serves besides ``/metrics``: the CS pages (web/pages.py) and the
#: worklist API (web/worklist.py), routed by web/router.py. ``<id>``: a customer id.
SERVED_PAGES = (("worklist", "/"), ("customer", "/customers/<id>"), ("segments", "/segments"))
SERVED_API = ("/api/v1/customers", "/api/v1/customers/<id>", "/api/v1/segments",
              "/api/v1/winback", "/api/v1/transitions")


def serving_banner(process: int, url: str) -> str:
    """What ``run`` prints once its port answers: every page and API route, in full.

    >>> print(serving_banner(0, "http://127.0.0.1:9464"))
    churnwatch run: process 0 serves metrics on http://127.0.0.1:9464/metrics
      worklist  http://127.0.0.1:9464/
      customer  http://127.0.0.1:9464/customers/<id>
      segments  http://127.0.0.1:9464/segments
      API       http://127.0.0.1:9464/api/v1/customers http://127.0.0.1:9464/api/v1/customers/<id> \
http://127.0.0.1:9464/api/v1/segments http://127.0.0.1:9464/api/v1/winback \
http://127.0.0.1:9464/api/v1/transitions (docs/worklist.md)
      health    http://127.0.0.1:9464/healthz
    """
    lines = [f"churnwatch run: process {process} serves metrics on {url}/metrics"]
    lines += [f"  {name:<9} {url}{path}" for name, path in SERVED_PAGES]
    lines.append(f"  {'API':<9} " + " ".join(url + path for path in SERVED_API)
                 + " (docs/worklist.md)")
    lines.append(f"  {'health':<9} {url}/healthz")
    return "\n".join(lines)


@contextmanager
def metrics_server(options: RunOptions, store_factory: Callable[[], Any]) -> Iterator[Any]:
    """This process's metrics hooks, served on ``metrics_port + process_id`` while running.

    Yields the hooks (``None`` when metrics are off). Only process 0 serves the business
    metrics read from Redis, so a Prometheus job over every process counts customers once.
    """
    if not options.metrics:
        yield None
        return
    from prometheus_client import CollectorRegistry

    from churnwatch.metrics.pipeline import PipelineMetrics
    from churnwatch.web.server import start_metrics_server

    config = options.config
    process = options.process_id or 0
    port = options.metrics_port if options.metrics_port is not None else config.metrics_port
    if port:
        port += process
    host = options.metrics_host or config.metrics_host
    registry = CollectorRegistry()
    hooks = PipelineMetrics(registry, sources=(options.source,))  # series of the source in use
    try:
        server = start_metrics_server(host, port, config, store_factory, registry, hooks,
                                      serve_business=process == 0)
    except OSError as exc:
        from churnwatch.runtime import UsageError

        raise UsageError(f"cannot serve metrics on {host}:{port} (process {process}): "
                         f"{exc.strerror or exc}; pick another --metrics-port") from None
    print(serving_banner(process, server.url), file=sys.stderr, flush=True)
    try:
        yield hooks
    finally:
        server.shutdown()


def run(options: RunOptions, hooks: Any = None) -> None:
    """Run the live dataflow until its source ends (``stop_at_end``, or ``options.stop`` set).

    ``hooks`` (a ``FlowHooks``) replace the metrics exporter's, for embedding and tests.
    """
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from churnwatch.core.records import FlowHooks
    from churnwatch.dataflows.flow import FlowSettings, build_flow
    from churnwatch.dataflows.progress import SourceProgress
    from churnwatch.state.base import StoreLayout, claim_layout_of
    from churnwatch.state.redis_store import RedisStore

    config = options.config
    observers: list[Any] = []

    def store_factory() -> RedisStore:
        # A live monitor waits for Redis as long as it takes: max_wait=None.
        return RedisStore(options.redis_url, config.shards, config.key_prefix,
                          observer=observers[0] if observers else None, max_wait=None,
                          layout=StoreLayout.from_config(config))

    recovery = None
    if options.recovery_dir:
        ensure_recovery_partitions(options.recovery_dir,
                                   options.recovery_partitions or options.total_workers)
        recovery = RecoveryConfig(str(options.recovery_dir),
                                  timedelta(seconds=options.backup_interval))
    with metrics_server(options, store_factory) if hooks is None else _given(hooks) as active:
        if active is not None and hasattr(active, "roundtrip"):
            observers.append(active)
        progress = SourceProgress()
        source, source_name = build_source(options, active, progress)
        settings = FlowSettings(config, store_factory, clock=options.clock, progress=progress,
                                hooks=active or FlowHooks(),
                                transitions_path=options.transitions_path,
                                dead_letters_path=options.dead_letters_path,
                                stop=options.stop, workers=options.total_workers,
                                partitions=source_partitions(options))
        flow = build_flow(settings, source, source_name)
        claim_layout_of(store_factory)  # a store written with another shard count: refused here
        cli_main(flow, workers_per_process=options.workers, process_id=options.process_id,
                 addresses=options.addresses,
                 epoch_interval=timedelta(seconds=options.snapshot_interval),
                 recovery_config=recovery)


@contextmanager
def _given(hooks: Any) -> Iterator[Any]:
    yield hooks


