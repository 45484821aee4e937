"""Further subcommands (demo, simulate, run, top, explain, dashboards), each in its module."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the subcommands that are not defined in ``churnwatch.cli``."""
