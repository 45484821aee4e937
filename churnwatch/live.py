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

import argparse
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


#: What the metrics port serves besides ``/metrics``: the CS pages (metrics/pages.py) and the
#: worklist API (metrics/worklist.py), routed by metrics/exporter.py. ``<id>``: a customer id.
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

    from churnwatch.metrics.exporter import PipelineMetrics, start_metrics_server

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

    from churnwatch.dataflows.flow import FlowHooks, FlowSettings, build_flow
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


def cmd_run(args: argparse.Namespace) -> int:
    """``churnwatch run``."""
    from churnwatch.embedded import configured_redis_url, redis_url_or_embedded
    from churnwatch.runtime import (
        GracefulStop,
        UsageError,
        check_login,
        config_from_args,
        tune_garbage_collector,
    )
    from churnwatch.state.cluster import is_cluster_url
    from churnwatch.state.connection import describe_failure, is_authentication_error, redact_url

    tune_garbage_collector()
    config = config_from_args(args)
    source = args.source or config.source
    clock = args.clock or ("event" if source == "simulator" else "wall")
    addresses = [a.strip() for a in args.addresses.split(";") if a.strip()] \
        if args.addresses else None
    if (args.process_id is None) != (addresses is None):
        raise UsageError("-i/--process-id and -a/--addresses go together: every process of a "
                         "cluster gets the same address list and its own index in it")
    if addresses is not None and not 0 <= args.process_id < len(addresses):
        raise UsageError(f"--process-id {args.process_id} is not an index into the "
                         f"{len(addresses)} --addresses")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.snapshot_interval <= 0:
        raise UsageError(f"--snapshot-interval must be positive, got {args.snapshot_interval}")
    url = configured_redis_url(args.redis_url)
    if not url and source == "redis":
        raise UsageError("run --source redis needs the monitor's Redis, which holds the event "
                         "streams and the state: give --redis-url or set CHURNWATCH_REDIS_URL "
                         "(or CHURNWATCH_REDIS_URL_FILE). Only --source kafka or simulator "
                         "start a private Redis when none is given")
    if url:
        # A cluster client connects when made (the source's too): the cluster must answer at
        # start; one Redis may come up later, the monitor waits for it.
        check_login(url, must_answer=is_cluster_url(url))
    stop = GracefulStop("run")
    with stop.installed(), redis_url_or_embedded(url) as redis_url:
        options = RunOptions(
            config=config, redis_url=redis_url, source=source, clock=clock,
            workers=args.workers, process_id=args.process_id, addresses=addresses,
            recovery_dir=args.recovery_dir, recovery_partitions=args.recovery_partitions,
            snapshot_interval=args.snapshot_interval, backup_interval=args.backup_interval,
            metrics=not args.no_metrics, metrics_host=args.metrics_host,
            metrics_port=args.metrics_port, stop_at_end=args.stop_at_end,
            transitions_path=args.transitions_out, dead_letters_path=args.dead_letters_out,
            simulator_customers=args.customers, simulator_seed=args.seed,
            simulator_days=args.days, seconds_per_day=args.seconds_per_day,
            stop=stop.requested)
        where = redact_url(redis_url) if url else "a private Redis (discarded on exit)"
        print(f"churnwatch run: source {source}, clock {clock}, "
              f"{options.total_workers} worker(s) in the cluster, state in {where}",
              file=sys.stderr, flush=True)
        try:
            run(options)
        except BaseException as exc:
            # Bytewax wraps what a step raised in its own error: find the cause.
            login = _cause_in(exc, is_authentication_error)
            if login is not None:
                raise UsageError(describe_failure(redis_url, login)) from None
            if stop.requested.is_set() and _cause_in(
                    exc, lambda e: isinstance(e, KeyboardInterrupt)) is not None:
                print(f"churnwatch run: stopped at once ({stop.reason}, twice); a restart "
                      "re-reads up to one snapshot interval", file=sys.stderr, flush=True)
                return 130 if stop.exit_code == 130 else 143  # 128 + the signal, as a shell
            raise
    if stop.requested.is_set():
        print(f"churnwatch run: stopped ({stop.reason}): every batch read was committed"
              + (", final snapshot taken" if args.recovery_dir else ""),
              file=sys.stderr, flush=True)
        return stop.exit_code
    return 0


def _cause_in(exc: BaseException | None, matches: Callable[[BaseException], bool]
              ) -> BaseException | None:
    """The first exception in ``exc``'s chain of causes that ``matches``."""
    seen = 0
    while exc is not None and seen < 10:
        if matches(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``run`` (and ``publish``, which feeds it)."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("run", help="the live monitor: read the event stream, score, serve "
                       "/metrics", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=SOURCES, default=None,
                   help="where events come from (default: [source] kind of the config, redis)")
    p.add_argument("--clock", choices=CLOCKS, default=None,
                   help="what 'now' is for silent customers: the wall clock (live, the "
                   "default), or the newest event time (the simulator's default; also makes a "
                   "run reproducible)")
    scale = p.add_argument_group("scaling (Bytewax)")
    scale.add_argument("-w", "--workers", type=int, default=1,
                       help="worker threads in this process (prefer processes: the GIL)")
    scale.add_argument("-i", "--process-id", type=int, default=None,
                       help="this process's index in --addresses")
    scale.add_argument("-a", "--addresses", default=None, metavar="HOST:PORT;HOST:PORT",
                       help="every process of the cluster, ';'-separated, same list everywhere")
    rec = p.add_argument_group("recovery (Bytewax)")
    rec.add_argument("--recovery-dir", metavar="DIR",
                     help="keep source positions here and resume from them after a crash "
                     "(partitions are created when DIR has none)")
    rec.add_argument("--recovery-partitions", type=int, metavar="N",
                     help="partitions to create in an empty --recovery-dir (default: the "
                     "cluster's worker count; use the most workers you will ever run)")
    rec.add_argument("--snapshot-interval", type=float, default=5.0, metavar="SECS",
                     help="seconds between snapshots (Bytewax epochs); a resume after a crash "
                     "re-reads at most this much, harmlessly; after SIGTERM or Ctrl-C nothing "
                     "(default: 5)")
    rec.add_argument("--backup-interval", type=float, default=0.0, metavar="SECS",
                     help="keep older snapshots this long, for backups of DIR (default: 0)")
    met = p.add_argument_group("metrics")
    met.add_argument("--metrics-host", default=None,
                     help="address to serve /metrics on (default: [metrics] host)")
    met.add_argument("--metrics-port", type=int, default=None,
                     help="port of process 0; process i uses this + i (default: [metrics] "
                     "port; 0: any free port)")
    met.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    out = p.add_argument_group("outputs")
    out.add_argument("--transitions-out", metavar="PATH",
                     help="also append tier transitions as JSONL (one file per worker)")
    out.add_argument("--dead-letters-out", metavar="PATH",
                     help="also append dead letters as JSONL")
    p.add_argument("--stop-at-end", action="store_true",
                   help="stop once every partition is read to its end (backfills, tests) "
                   "instead of waiting for new events")
    sim = p.add_argument_group("--source simulator")
    sim.add_argument("--customers", type=int, default=400)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--days", type=float, default=365.0)
    sim.add_argument("--seconds-per-day", type=float, default=0.1,
                     help="wall seconds per simulated day (0: as fast as possible)")
    add_monitor_options(p, redis_help=(
        "the Redis holding the event streams and the state (default: $CHURNWATCH_REDIS_URL, "
        "or the file named by $CHURNWATCH_REDIS_URL_FILE for URLs with a password); required "
        "with --source redis. With --source kafka or simulator and no URL, a private Redis "
        "is started and its state discarded on exit"))
    p.set_defaults(func=cmd_run)

    from churnwatch import publish

    publish.register(sub, common)
