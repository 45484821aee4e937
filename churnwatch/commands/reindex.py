"""``churnwatch reindex``: rebuild the worklist's urgency index from the stored customers
(once, after upgrading from a version without it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def cmd_reindex(args: argparse.Namespace) -> int:
    """``churnwatch reindex``: the urgency index of every stored customer, written afresh."""
    import time

    from churnwatch.runtime import config_from_args, monitor_store

    config = config_from_args(args)
    with monitor_store(args, config, "reindex", max_wait=30.0) as store:
        started = time.perf_counter()
        indexed = store.rebuild_urgency_index()
    print(f"indexed {indexed} customers in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``reindex``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("reindex", help="rebuild the worklist's urgency index from the stored "
                       "customers (once, after upgrading from a version without it)")
    add_monitor_options(p)
    p.set_defaults(func=cmd_reindex)
