"""The ``churnwatch`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

from churnwatch.core.config import ConfigError
from churnwatch.runtime import (
    UsageError,
    add_common_options,
    config_from_args,
    store_factory,
    time_option,
)

log = logging.getLogger("churnwatch")


def cmd_replay(args: argparse.Namespace) -> int:
    from churnwatch.replay import export_rows, replay, state_time, write_export

    config = config_from_args(args)
    as_of = time_option(args.as_of, "--as-of") if args.as_of else None
    for path in args.files:
        if not os.path.isfile(path):
            raise UsageError(f"replay: no such file: {path}")
    with store_factory(args, config) as (factory, _url):
        started = time.perf_counter()
        summary = replay(args.files, config, factory, as_of=as_of, workers=args.workers,
                         transitions_path=args.transitions_out,
                         dead_letters_path=args.dead_letters_out)
        elapsed = time.perf_counter() - started
        store = factory()
        at = as_of if as_of is not None else state_time(store)
        rows = export_rows(store, config, at) if args.export else None
        if rows is not None:
            write_export(rows, args.export)
        dead = store.dead_letters(1_000_000) if args.verbose else []
        print(f"replayed {', '.join(args.files)} in {elapsed:.1f} s; "
              f"{summary.silent_transitions} transitions of silent customers up to --as-of"
              if as_of is not None else
              f"replayed {', '.join(args.files)} in {elapsed:.1f} s", file=sys.stderr)
        if args.export and args.export != "-":
            print(f"exported {len(rows or [])} customers to {args.export}", file=sys.stderr)
        for record in dead:
            print(f"dead letter: {record.get('position')}: {record.get('detail')}",
                  file=sys.stderr)
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from churnwatch.replay import backtest, dump_json

    config = config_from_args(args)
    cutoff = time_option(args.cutoff, "--cutoff")
    if args.horizon <= 0:
        raise UsageError(f"--horizon must be a positive number of days, got {args.horizon}")
    if not os.path.isfile(args.file):
        raise UsageError(f"backtest: no such file: {args.file}")
    with store_factory(args, config) as (factory, _url):
        report = backtest(args.file, cutoff, args.horizon, config, factory, workers=args.workers)
    if report.customers == 0:
        raise UsageError(f"backtest: no customer ordered before the cut-off {args.cutoff}")
    print(dump_json(report.as_dict()) if args.json else report.render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="churnwatch",
        description="Real-time customer churn monitor: health scores, risk tiers, alerts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    common = add_common_options
    p = sub.add_parser("replay", help="push JSON Lines event files through the dataflow")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--as-of", help="afterwards, advance the clock to this instant (RFC 3339 or "
                   "epoch seconds) so silent customers are re-scored")
    p.add_argument("--export", metavar="PATH", help="write every customer's score as CSV "
                   "('-' for standard output)")
    p.add_argument("--workers", type=int, default=1, help="Bytewax worker threads")
    p.add_argument("--transitions-out", metavar="PATH", help="append tier transitions as JSONL")
    p.add_argument("--dead-letters-out", metavar="PATH", help="append dead letters as JSONL")
    common(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("backtest", help="judge the score on your own history")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--cutoff", required=True, help="score as of this instant (RFC 3339 or "
                   "epoch seconds)")
    p.add_argument("--horizon", type=float, required=True, metavar="DAYS",
                   help="a customer churned if no order follows within this many days")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    common(p)
    p.set_defaults(func=cmd_backtest)
    _register_more(sub, common)
    return parser


def _register_more(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                   common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Commands that live in their own modules."""
    from churnwatch import commands

    commands.register(sub, common)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UsageError) as exc:
        print(f"churnwatch: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"churnwatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
