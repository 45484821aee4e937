"""``churnwatch backtest``: judge the score on a shop's own history (replay up to a cut-off,
then compare with what customers did next; :mod:`churnwatch.backtest`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from churnwatch.commands.inputs import (
    check_inputs,
    dead_letters_files,
    dead_letters_note,
    dead_letters_target,
)
from churnwatch.runtime import (
    UsageError,
    config_from_args,
    store_factory,
    time_option,
    tune_garbage_collector,
)


def cmd_backtest(args: argparse.Namespace) -> int:
    from churnwatch.backtest import backtest, dump_json
    from churnwatch.replay import ReplayCounts, render_summary

    tune_garbage_collector()
    config = config_from_args(args)
    cutoff = time_option(args.cutoff, "--cutoff")
    if args.horizon <= 0:
        raise UsageError(f"--horizon must be a positive number of days, got {args.horizon}")
    check_inputs("backtest", [args.file])
    dead_path, default = dead_letters_target(args, [args.file], None)
    counts = ReplayCounts()
    started = time.perf_counter()
    with store_factory(args, config) as (factory, _url):
        try:
            report = backtest(args.file, cutoff, args.horizon, config, factory,
                              workers=args.workers, hooks=counts, dead_letters_path=dead_path,
                              progress=True)
        finally:
            files = dead_letters_files(dead_path, default, args.workers)
        summary = counts.summary(cutoff, seconds=time.perf_counter() - started)
        note = dead_letters_note(files, default, summary.dead_letters)
        print(render_summary("backtest (the history up to the cut-off)", summary,
                             factory().customer_count(), note), file=sys.stderr)
    if report.customers == 0:
        raise UsageError(f"backtest: no customer ordered before the cut-off {args.cutoff}")
    print(dump_json(report.as_dict()) if args.json else report.render())
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``backtest``."""
    p = sub.add_parser("backtest", help="judge the score on your own history")
    p.add_argument("file", metavar="FILE", help="JSON Lines, plain or gzip; '-' reads standard "
                   "input")
    p.add_argument("--cutoff", required=True, help="score as of this instant (RFC 3339 or "
                   "epoch seconds)")
    p.add_argument("--horizon", type=float, required=True, metavar="DAYS",
                   help="a customer churned if no order follows within this many days")
    p.add_argument("--workers", type=int, default=1, help="Bytewax worker threads")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--dead-letters-out", metavar="PATH", help="append dead letters as JSONL "
                   "(default: FILE.dead-letters.jsonl, written only when there are any)")
    common(p)
    p.set_defaults(func=cmd_backtest)
