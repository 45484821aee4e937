"""``churnwatch publish``: JSON Lines files (or standard input) onto the Redis streams that
``churnwatch run`` reads, paced at ``--rate`` events per second if asked
(the publisher: :mod:`churnwatch.publish`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import redis

from churnwatch.core.config import load_config
from churnwatch.publish import FORMATS, Publisher, read_lines


class Pacer:
    """Holds a publisher to ``rate`` events per second on average (``None``: flat out)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.sent = 0
        self.started = time.monotonic()

    def __call__(self, count: int) -> None:
        self.sent += count
        if self.rate:
            ahead = self.sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)


def cmd_publish(args: argparse.Namespace) -> int:
    """``churnwatch publish FILE...``."""
    import os

    from churnwatch.runtime import UsageError, check_login, monitor_redis_url
    from churnwatch.state.connection import describe_failure

    url = monitor_redis_url(args, "publish")
    for path in args.files:
        if path != "-" and not os.path.isfile(path):
            raise UsageError(f"publish: no such file: {path}")
    if args.rate is not None and args.rate <= 0:
        raise UsageError(f"--rate must be a positive number of events per second, got "
                         f"{args.rate}")
    config = load_config(args.config or os.environ.get("CHURNWATCH_CONFIG"))
    check_login(url, must_answer=True)
    publisher = Publisher(url, config, format=args.format, maxlen=args.maxlen)
    started = time.perf_counter()
    try:
        count = publisher.publish(read_lines(args.files), on_batch=Pacer(args.rate))
    except redis.RedisError as exc:
        raise UsageError(f"publish: {describe_failure(url, exc)}") from None
    finally:
        publisher.close()
    elapsed = time.perf_counter() - started
    print(f"published {count} events to {config.stream_prefix}:0..{config.stream_partitions - 1}"
          f" in {elapsed:.1f} s", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``publish`` to the ``churnwatch`` command."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("publish", help="append JSON Lines events to the Redis streams that "
                       "`churnwatch run` reads")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines files ('-': stdin)")
    p.add_argument("--format", choices=FORMATS, default="json",
                   help="encoding of each stream entry (default: json)")
    p.add_argument("--rate", type=float, metavar="EVENTS_PER_S",
                   help="publish at this average rate instead of flat out")
    p.add_argument("--maxlen", type=int, metavar="N",
                   help="cap each stream at about N entries (XADD MAXLEN ~)")
    add_monitor_options(p)
    p.set_defaults(func=cmd_publish)
