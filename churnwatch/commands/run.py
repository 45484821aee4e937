"""``churnwatch run``: the live monitor's options checked, a clean stop installed, and
:func:`churnwatch.live.run` started (what the monitor does: :mod:`churnwatch.live`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from churnwatch.live import CLOCKS, SOURCES, RunOptions, run


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
    """Add ``run``; its help is the live monitor's own description (:mod:`churnwatch.live`)."""
    from churnwatch import live
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("run", help="the live monitor: read the event stream, score, serve "
                       "/metrics", description=live.__doc__,
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
