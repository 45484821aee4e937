"""The ``churnwatch`` subcommands: one module per command, and this registry, the one place
that lists them.

Each command module has ``register(sub, common)``, which adds its parser to the ``churnwatch``
command and sets the function that runs it (``common`` adds ``--config`` and ``--redis-url`` as
the commands that may run on a private Redis take them). A command module holds what only that
command does; what several commands, the live monitor or the benchmarks share lives in
``churnwatch/*.py`` (replay, export, backtest, live, publish, simulator, runtime). Nothing
imports a command module but :mod:`churnwatch.cli`, through :func:`register_all`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from churnwatch.commands import (
    backtest,
    dashboards,
    dead_letters,
    demo,
    explain,
    export,
    import_csv,
    publish,
    reindex,
    replay,
    run,
    serve,
    simulate,
    stack,
    status,
    top,
    upgrade,
)

#: Every command module, in the order ``churnwatch --help`` lists the commands.
COMMANDS = (replay, backtest, simulate, demo, run, publish, top, explain, serve, reindex, upgrade,
            export, import_csv, status, dead_letters, stack, dashboards)


def register_all(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                 common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add every command of :data:`COMMANDS` to the ``churnwatch`` command's subparsers."""
    for command in COMMANDS:
        command.register(sub, common)
