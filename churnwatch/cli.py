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
    tune_garbage_collector,
)

log = logging.getLogger("churnwatch")


def _check_inputs(command: str, paths: Sequence[str]) -> None:
    """Every input exists (``-`` is standard input, readable once)."""
    if list(paths).count("-") > 1:
        raise UsageError(f"{command}: standard input ('-') can be read only once")
    for path in paths:
        if path != "-" and not os.path.isfile(path):
            raise UsageError(f"{command}: no such file: {path}")


def _dead_letters_target(args: argparse.Namespace, inputs: Sequence[str],
                         export: str | None) -> tuple[str, bool]:
    """Where this run's dead letters go, and whether that is the default (not chosen)."""
    if args.dead_letters_out:
        return args.dead_letters_out, False
    from churnwatch.replay import clear_dead_letter_files, default_dead_letters_path

    path = default_dead_letters_path(inputs, export)
    clear_dead_letter_files(path, args.workers)
    return path, True


def _dead_letters_files(path: str, default: bool, workers: int) -> list[str]:
    """The files that hold this run's dead letters (empty default files are removed)."""
    from churnwatch.replay import dead_letter_files, settle_dead_letter_files

    return settle_dead_letter_files(path, workers) if default else \
        dead_letter_files(path, workers)


def _dead_letters_note(files: Sequence[str], default: bool, count: int) -> str:
    """The summary's word on where the dead letters went."""
    if not count:
        return ""
    where = ", ".join(files)
    return (f"written to {where} (the default; --dead-letters-out chooses)" if default
            else f"appended to {where}")


def cmd_replay(args: argparse.Namespace) -> int:
    from churnwatch.replay import (
        AsOfBeforeData,
        export_rows,
        render_summary,
        replay,
        state_time,
        write_export,
    )

    tune_garbage_collector()
    config = config_from_args(args)
    as_of = time_option(args.as_of, "--as-of") if args.as_of else None
    _check_inputs("replay", args.files)
    dead_path, default = _dead_letters_target(args, args.files, args.export)
    with store_factory(args, config) as (factory, _url):
        refused: AsOfBeforeData | None = None
        try:
            summary = replay(args.files, config, factory, as_of=as_of, workers=args.workers,
                             transitions_path=args.transitions_out,
                             dead_letters_path=dead_path, progress=True)
        except AsOfBeforeData as exc:  # still say what was read and where dead letters went
            refused, summary = exc, exc.summary
        finally:
            files = _dead_letters_files(dead_path, default, args.workers)
        store = factory()
        customers = store.customer_count()
        note = _dead_letters_note(files, default, summary.dead_letters)
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


def cmd_backtest(args: argparse.Namespace) -> int:
    from churnwatch.replay import ReplayCounts, backtest, dump_json, render_summary

    tune_garbage_collector()
    config = config_from_args(args)
    cutoff = time_option(args.cutoff, "--cutoff")
    if args.horizon <= 0:
        raise UsageError(f"--horizon must be a positive number of days, got {args.horizon}")
    _check_inputs("backtest", [args.file])
    dead_path, default = _dead_letters_target(args, [args.file], None)
    counts = ReplayCounts()
    started = time.perf_counter()
    with store_factory(args, config) as (factory, _url):
        try:
            report = backtest(args.file, cutoff, args.horizon, config, factory,
                              workers=args.workers, hooks=counts, dead_letters_path=dead_path,
                              progress=True)
        finally:
            files = _dead_letters_files(dead_path, default, args.workers)
        summary = counts.summary(cutoff, seconds=time.perf_counter() - started)
        note = _dead_letters_note(files, default, summary.dead_letters)
        print(render_summary("backtest (the history up to the cut-off)", summary,
                             factory().customer_count(), note), file=sys.stderr)
    if report.customers == 0:
        raise UsageError(f"backtest: no customer ordered before the cut-off {args.cutoff}")
    print(dump_json(report.as_dict()) if args.json else report.render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="churnwatch",
        description="Real-time customer churn monitor: health scores, risk tiers, alerts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    parser.add_argument("--version", action="version", version=f"churnwatch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = add_common_options
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
    _register_more(sub, common)
    return parser


def _version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("churnwatch")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _register_more(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                   common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Commands that live in their own modules."""
    from churnwatch import commands

    commands.register(sub, common)


#: The exit status when standard output's reader went away, as a shell reports a command that a
#: SIGPIPE ended (128 + 13): `churnwatch top | head -1` ends like `yes | head -1`, quietly.
READER_GONE = 141


def _readers_gone() -> bool:
    """Whether standard output (or error) is a pipe whose reader has closed it; if so, both are
    pointed at /dev/null so that nothing written or flushed on the way out raises again."""
    import select

    gone = []
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            poll = select.poll()
            poll.register(fd, select.POLLOUT)
            if any(revents & select.POLLERR for _, revents in poll.poll(0)):
                gone.append(fd)
        except (AttributeError, OSError, ValueError):  # replaced or closed streams
            continue
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in gone:
            os.dup2(devnull, fd)
        os.close(devnull)
    return bool(gone)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status = int(args.func(args) or 0)
        if not sys.stdout.closed:  # a command writing to `-` may have closed it already
            sys.stdout.flush()  # inside the try: a reader gone (`| head`) is found here
        return status
    except BrokenPipeError:
        if not _readers_gone():
            raise
        return READER_GONE
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
