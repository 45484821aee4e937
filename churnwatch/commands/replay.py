"""``churnwatch replay``: JSON Lines event files through the dataflow, in event time, then
optionally every customer's score as CSV (``--export``) and the clock advanced (``--as-of``)."""

from __future__ import annotations

import argparse
import sys
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


def cmd_replay(args: argparse.Namespace) -> int:
    from churnwatch.export import export_rows, state_time, write_export
    from churnwatch.replay import AsOfBeforeData, render_summary, replay

    tune_garbage_collector()
    config = config_from_args(args)
    as_of = time_option(args.as_of, "--as-of") if args.as_of else None
    check_inputs("replay", args.files)
    dead_path, default = dead_letters_target(args, args.files, args.export)
    with store_factory(args, config) as (factory, _url):
        refused: AsOfBeforeData | None = None
        try:
            summary = replay(args.files, config, factory, as_of=as_of, workers=args.workers,
                             transitions_path=args.transitions_out,
                             dead_letters_path=dead_path, progress=True)
        except AsOfBeforeData as exc:  # still say what was read and where dead letters went
            refused, summary = exc, exc.summary
        finally:
            files = dead_letters_files(dead_path, default, args.workers)
        store = factory()
        customers = store.customer_count()
        note = dead_letters_note(files, default, summary.dead_letters)
        extra = [("silent moves", f"{summary.silent_transitions:,}")] \
            if as_of is not None and refused is None else []
        print(render_summary("replay", summary, customers, note, extra), file=sys.stderr)
        if refused is not None:
            raise refused
        if summary.read_errors:
            raise UsageError("; ".join(summary.read_errors) + " (nothing exported)")
        at = as_of if as_of is not None else state_time(store)
        rows = export_rows(store, config, at) if args.export else None
        if rows is not None:
            write_export(rows, args.export)
        dead = store.dead_letters(1_000_000) if args.verbose else []
        if args.export and args.export != "-":
            print(f"exported {len(rows or [])} customers to {args.export}", file=sys.stderr)
        for record in dead:
            print(f"dead letter: {record.get('position')}: {record.get('detail')}",
                  file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``replay``."""
    p = sub.add_parser("replay", help="push JSON Lines event files through the dataflow",
                       description="Replay JSON Lines event files (plain or gzip, '-' for "
                       "standard input) through the dataflow, in event time; a summary of what "
                       "was read, applied and dead-lettered ends on standard error.")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines, plain or gzip "
                   "(recognised by content); '-' reads standard input")
    p.add_argument("--as-of", help="afterwards, advance the clock to this instant (RFC 3339 or "
                   "epoch seconds) so silent customers are re-scored")
    p.add_argument("--export", metavar="PATH", help="write every customer's score as CSV "
                   "('-' for standard output)")
    p.add_argument("--workers", type=int, default=1, help="Bytewax worker threads")
    p.add_argument("--transitions-out", metavar="PATH", help="append tier transitions as JSONL")
    p.add_argument("--dead-letters-out", metavar="PATH", help="append dead letters as JSONL "
                   "(default: EXPORT.dead-letters.jsonl beside the export, else beside the "
                   "first FILE, written only when there are any)")
    common(p)
    p.set_defaults(func=cmd_replay)
