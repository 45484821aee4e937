"""``churnwatch upgrade``: convert a store written by an earlier churnwatch to the current
format (what the monitor's first start does anyway)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def cmd_upgrade(args: argparse.Namespace) -> int:
    """``churnwatch upgrade``: the store's customers converted to bucket checkpoints, if they
    are held in the form of an earlier churnwatch."""
    import time

    from churnwatch.runtime import config_from_args, monitor_store

    config = config_from_args(args)
    with monitor_store(args, config, "upgrade", max_wait=30.0) as store:
        started = time.perf_counter()
        store.claim_layout()
    print(f"the store holds the current format ({time.perf_counter() - started:.1f} s)",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``upgrade``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("upgrade", help="convert a store written by an earlier churnwatch to the "
                       "current format (the monitor's first start does it too)")
    add_monitor_options(p)
    p.set_defaults(func=cmd_upgrade)
