"""Further subcommands, each registered by the module that implements it."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the subcommands that are not defined in ``churnwatch.cli``."""
    from churnwatch import dead_letters, export, importer, live, simulator, stack, status
    from churnwatch.dashboards import cli as dashboards_cli
    from churnwatch.metrics import cli as metrics_cli

    simulator.register(sub, common)
    live.register(sub, common)
    metrics_cli.register(sub, common)
    export.register(sub, common)
    importer.register(sub, common)
    status.register(sub, common)
    dead_letters.register(sub, common)
    stack.register(sub, common)
    dashboards_cli.register(sub, common)
