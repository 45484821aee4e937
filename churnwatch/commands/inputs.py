"""What the commands that read event files share: the inputs checked before anything starts,
and where a run's dead letters go (a default file beside the input, removed when empty, or the
one ``--dead-letters-out`` names)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from churnwatch.runtime import (
    UsageError,
)


def check_inputs(command: str, paths: Sequence[str]) -> None:
    """Every input exists (``-`` is standard input, readable once)."""
    if list(paths).count("-") > 1:
        raise UsageError(f"{command}: standard input ('-') can be read only once")
    for path in paths:
        if path != "-" and not os.path.isfile(path):
            raise UsageError(f"{command}: no such file: {path}")


def dead_letters_target(args: argparse.Namespace, inputs: Sequence[str],
                         export: str | None) -> tuple[str, bool]:
    """Where this run's dead letters go, and whether that is the default (not chosen)."""
    if args.dead_letters_out:
        return args.dead_letters_out, False
    from churnwatch.replay import clear_dead_letter_files, default_dead_letters_path

    path = default_dead_letters_path(inputs, export)
    clear_dead_letter_files(path, args.workers)
    return path, True


def dead_letters_files(path: str, default: bool, workers: int) -> list[str]:
    """The files that hold this run's dead letters (empty default files are removed)."""
    from churnwatch.replay import dead_letter_files, settle_dead_letter_files

    return settle_dead_letter_files(path, workers) if default else \
        dead_letter_files(path, workers)


def dead_letters_note(files: Sequence[str], default: bool, count: int) -> str:
    """The summary's word on where the dead letters went."""
    if not count:
        return ""
    where = ", ".join(files)
    return (f"written to {where} (the default; --dead-letters-out chooses)" if default
            else f"appended to {where}")
