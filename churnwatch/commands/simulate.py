"""``churnwatch simulate``: a simulated shop's event stream (:mod:`churnwatch.simulator`) as
JSON Lines, or published to the streams that ``churnwatch run`` reads."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterator

from churnwatch.core.signals import DAY
from churnwatch.simulator import ShopSimulator, write_jsonl


def paced(events: Iterator[dict[str, object]], seconds_per_day: float,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, object]]:
    """Yield events at the pace of ``seconds_per_day`` wall seconds per simulated day."""
    started = time.monotonic()
    first_ts: float | None = None
    for event in events:
        ts = float(event["ts"])  # type: ignore[arg-type]
        if first_ts is None:
            first_ts = ts
        due = started + (ts - first_ts) / DAY * seconds_per_day
        wait = due - time.monotonic()
        if wait > 0:
            sleep(wait)
        yield event


def cmd_simulate(args: argparse.Namespace) -> int:
    """``churnwatch simulate``: write the stream to a file, or publish it live."""
    from churnwatch.runtime import UsageError, time_option

    if args.customers < 1:
        raise UsageError(f"--customers must be a positive whole number, got {args.customers}")
    if not args.days > 0 or not math.isfinite(args.days):
        raise UsageError(f"--days must be a positive number of days, got {args.days:g}")
    if not args.seconds_per_day >= 0 or not math.isfinite(args.seconds_per_day):
        raise UsageError(f"--seconds-per-day must be 0 or more, got {args.seconds_per_day:g}")
    start = time_option(args.start, "--start") if args.start is not None else \
        time.time() - args.days * DAY
    sim = ShopSimulator(customers=args.customers, seed=args.seed, start=start, days=args.days)
    if args.publish:
        from churnwatch.publish import Publisher
        from churnwatch.runtime import check_login, config_from_args, monitor_redis_url

        config = config_from_args(args)
        # The monitor's streams: publishing into a private Redis would feed nobody.
        url = monitor_redis_url(args, "simulate --publish")
        check_login(url, must_answer=True)
        publisher = Publisher(url, config)
        events = paced(sim.events(), args.seconds_per_day) if args.seconds_per_day else \
            sim.events()
        batch: list[dict[str, object]] = []
        for event in events:
            batch.append(event)
            if len(batch) >= 500 or args.seconds_per_day:
                publisher.publish(batch)
                batch = []
        if batch:
            publisher.publish(batch)
        publisher.close()
        return 0
    count = write_jsonl(args.out, sim)
    print(f"wrote {count} events for {args.customers} customers to {args.out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``simulate``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("simulate", help="generate a simulated shop's event stream",
                       description="Generate a simulated shop's event stream: JSON Lines to a "
                       "file or standard output, or published to the Redis streams that "
                       "`churnwatch run` reads.")
    p.add_argument("--out", default="-", help="JSON Lines file to write "
                   "('-': standard output; default: %(default)s)")
    p.add_argument("--customers", type=int, default=300, help="how many customers the shop has "
                   "(default: %(default)s)")
    p.add_argument("--days", type=float, default=365.0, help="how many days of history "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=1,
                   help="random seed: the same seed gives the same stream (default: %(default)s)")
    p.add_argument("--start", default=None, help="the first day: RFC 3339 with a zone or "
                   "epoch seconds (default: DAYS before now)")
    p.add_argument("--publish", action="store_true", help="publish to the Redis streams that "
                   "`churnwatch run` reads instead of writing a file (default: write a file)")
    p.add_argument("--seconds-per-day", type=float, default=0.0,
                   help="with --publish: pace the stream, wall seconds per simulated day "
                   "(default: %(default)s, as fast as possible)")
    add_monitor_options(p, redis_help="with --publish: the monitor's Redis (default: "
                        "$CHURNWATCH_REDIS_URL, or the file named by $CHURNWATCH_REDIS_URL_FILE)")
    p.set_defaults(func=cmd_simulate)
