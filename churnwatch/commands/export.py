"""``churnwatch export``: every customer of a running monitor as CSV, for CRM imports and audits.

Reads the monitor's Redis (never a private one: it would be empty) and writes, per customer,
the health score, tier, segment, components, return probability, orders, spend, last order and
the reasons, with exactly the columns of ``churnwatch replay --export`` (the same function
writes both: :func:`churnwatch.export.export_rows`). Scores are brought to ``--as-of`` (default:
now, as a live monitor scores), so a customer who went quiet since their last event is shown
as the monitor will score them; the stored state is not changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable


def cmd_export(args: argparse.Namespace) -> int:
    """``churnwatch export``."""
    from churnwatch.export import export_rows, write_export
    from churnwatch.runtime import config_from_args, monitor_store, time_option

    config = config_from_args(args)
    at = time_option(args.as_of, "--as-of") if args.as_of else time.time()
    with monitor_store(args, config, "export") as store:
        rows = export_rows(store, config, at)
    write_export(rows, args.out)  # a reader gone (`| head`) ends quietly in churnwatch.cli.main
    if args.out != "-":
        print(f"exported {len(rows)} customers to {args.out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``export``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("export", help="every customer's score, tier, components and reasons "
                       "as CSV, from the monitor's Redis", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="-", metavar="PATH",
                   help="CSV file to write ('-', the default: standard output)")
    p.add_argument("--as-of", metavar="TIME",
                   help="score everyone as of this instant (RFC 3339 or epoch seconds; "
                   "default: now). For state left by `replay --as-of T`, pass T")
    add_monitor_options(p)
    p.set_defaults(func=cmd_export)
