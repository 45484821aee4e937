"""The ``churnwatch`` command: the parser built from the command registry
(:mod:`churnwatch.commands`, one module per command), logging, and how errors end (exit 2 with
one line for a usage or configuration error, 141 quietly when a reader of the output went
away)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from churnwatch.commands import register_all
from churnwatch.core.config import ConfigError
from churnwatch.runtime import UsageError, add_common_options

log = logging.getLogger("churnwatch")


def build_parser() -> argparse.ArgumentParser:
    """The ``churnwatch`` parser: every command of the registry (:mod:`churnwatch.commands`)."""
    parser = argparse.ArgumentParser(
        prog="churnwatch",
        description="Real-time customer churn monitor: health scores, risk tiers, alerts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    parser.add_argument("--version", action="version", version=f"churnwatch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    register_all(sub, add_common_options)
    return parser


def _version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("churnwatch")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


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
