"""What every command shares: configuration loading, the state store it runs against, time
options, the one-line usage error and the clean stop on SIGTERM or Ctrl-C.

The CLI (``churnwatch.cli``) only builds the parser from the command registry; the command
modules (``churnwatch.commands``) and the application modules they run (replay, backtest, live,
publish, ...) import what they share from here, never from the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import redis
from redis.cluster import RedisCluster

from churnwatch.core.config import ChurnwatchConfig, load_config
from churnwatch.core.events import ContractViolation, parse_timestamp
from churnwatch.embedded import configured_redis_url, redis_url_or_embedded
from churnwatch.state.base import StateStore, StoreLayout
from churnwatch.state.cluster import redis_client
from churnwatch.state.connection import describe_failure, is_authentication_error
from churnwatch.state.redis_store import RedisStore

MONITOR_REDIS_HELP = ("the monitor's Redis, where `churnwatch run` keeps its streams and state "
                      "(default: $CHURNWATCH_REDIS_URL, or the file named by "
                      "$CHURNWATCH_REDIS_URL_FILE for URLs with a password)")


#: Allocations between two collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


class UsageError(Exception):
    """A bad argument or an unusable environment; reported in one line with exit code 2."""


def tune_garbage_collector() -> None:
    """For the commands that stream events (``run``, ``replay``, ``backtest``, ``demo``): set
    what is loaded so far (modules, configuration) aside from the cyclic garbage collector
    (``gc.freeze``) and collect the youngest generation every ``GC_YOUNG_THRESHOLD``
    allocations instead of every 700.

    Scoring allocates and drops a few hundred objects per event, almost none of them in
    reference cycles (reference counting frees them), so with the defaults the collector ran
    some 18,000 times over a 200,000-event replay, each full pass walking every long-lived
    object, for about a quarter of the replay's time
    (docs/decisions/0013-garbage-collector-tuned.md). Cycles are still collected, less often.

    >>> import gc
    >>> before = gc.get_threshold()
    >>> tune_garbage_collector()
    >>> gc.get_threshold()[0] == GC_YOUNG_THRESHOLD and gc.get_freeze_count() > 0
    True
    >>> gc.unfreeze(); gc.set_threshold(*before)
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def time_option(text: str, option: str) -> float:
    """Epoch seconds from a command-line time (RFC 3339 with a zone, or epoch seconds).

    >>> time_option("2024-01-01T00:00:00Z", "--as-of")
    1704067200.0
    >>> time_option("yesterday", "--as-of")
    Traceback (most recent call last):
    ...
    churnwatch.runtime.UsageError: --as-of: value is not an RFC 3339 time: 'yesterday'
    """
    try:
        return parse_timestamp(float(text) if _is_number(text) else text)
    except ContractViolation as exc:
        raise UsageError(f"{option}: {exc.detail.replace('field ' + repr('ts'), 'value')}"
                         ) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def config_from_args(args: argparse.Namespace) -> ChurnwatchConfig:
    """The configuration named by ``--config`` or ``$CHURNWATCH_CONFIG`` (else the defaults)."""
    path = getattr(args, "config", None) or os.environ.get("CHURNWATCH_CONFIG")
    return load_config(path)


@contextlib.contextmanager
def store_factory(args: argparse.Namespace, config: ChurnwatchConfig,
                  observer: object | None = None, max_wait: float | None = 60.0
                  ) -> Iterator[tuple[Callable[[], StateStore], str]]:
    """A factory of Redis stores over ``--redis-url`` (or a private embedded Redis), and the URL.

    Every store the factory made is closed when the block ends; the private Redis, if one was
    started, is stopped after them.
    """
    with redis_url_or_embedded(args.redis_url) as url:
        stores: list[RedisStore] = []

        def factory() -> StateStore:
            store = RedisStore(url, config.shards, config.key_prefix,
                               observer=observer, max_wait=max_wait,  # type: ignore[arg-type]
                               layout=StoreLayout.from_config(config))
            stores.append(store)
            return store

        try:
            yield factory, url
        finally:
            for store in stores:
                store.close()


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--redis-url``, as the commands that may run on a private Redis take
    them (replay, backtest, demo)."""
    parser.add_argument("--config", help="TOML configuration (default: built-in defaults, or "
                        "$CHURNWATCH_CONFIG)")
    parser.add_argument("--redis-url", help="Redis to use (default: $CHURNWATCH_REDIS_URL, else "
                        "a private embedded Redis for the duration of the command, whose state "
                        "is discarded on exit)")


def add_monitor_options(parser: argparse.ArgumentParser, redis_help: str = MONITOR_REDIS_HELP
                        ) -> None:
    """``--config`` and ``--redis-url`` for the commands that work on a running monitor's Redis
    (run, publish, top, explain, export, status): no private Redis, it would be empty."""
    parser.add_argument("--config", help="TOML configuration, the same as the monitor's "
                        "(default: built-in defaults, or $CHURNWATCH_CONFIG)")
    parser.add_argument("--redis-url", help=redis_help)


def monitor_redis_url(args: argparse.Namespace, command: str) -> str:
    """The monitor's Redis URL (``--redis-url``, the environment, or its file), else a
    :class:`UsageError` saying that ``command`` needs it."""
    url = configured_redis_url(getattr(args, "redis_url", None))
    if not url:
        raise UsageError(f"{command} works on the monitor's Redis: give --redis-url or set "
                         "CHURNWATCH_REDIS_URL (or CHURNWATCH_REDIS_URL_FILE, a file holding "
                         "the URL)")
    return url


def check_login(url: str, must_answer: bool) -> None:
    """Ping Redis once before a command starts: a refused login is a :class:`UsageError`
    (exit 2, one line, password redacted); so is no answer at all when ``must_answer`` (the
    one-shot commands), while the live monitor waits for a Redis that is down."""
    client: redis.Redis | RedisCluster | None = None
    try:
        client = redis_client(url, socket_connect_timeout=5, socket_timeout=5)
        client.ping()
    except redis.RedisError as exc:
        if must_answer or is_authentication_error(exc):
            raise UsageError(describe_failure(url, exc)) from None
    except (OSError, ValueError) as exc:  # a malformed URL, a missing socket file
        raise UsageError(describe_failure(url, exc)) from None
    finally:
        if client is not None:
            client.close()


@contextlib.contextmanager
def monitor_store(args: argparse.Namespace, config: ChurnwatchConfig, command: str,
                  max_wait: float = 5.0) -> Iterator[RedisStore]:
    """A store on the monitor's Redis for a one-shot command (top, explain, export, status).

    Redis must answer and accept the login; a Redis failure inside the block becomes a
    one-line :class:`UsageError` naming the (redacted) URL instead of a traceback.
    """
    url = monitor_redis_url(args, command)
    check_login(url, must_answer=True)
    store = RedisStore(url, config.shards, config.key_prefix, max_wait=max_wait,
                       layout=StoreLayout.from_config(config))
    try:
        yield store
    except redis.RedisError as exc:
        raise UsageError(f"{command}: {describe_failure(url, exc)}") from None
    finally:
        store.close()


class GracefulStop:
    """SIGTERM and Ctrl-C (SIGINT) as a request to stop cleanly, for the long-running commands.

    While :meth:`installed`, the first of those signals only sets :attr:`requested`: the
    dataflow's sources see it and end, so the flow reaches its end as a backfill does, commits
    its last batches and (with ``--recovery-dir``) takes a final snapshot; a restart re-reads
    nothing. A second signal stops at once (``KeyboardInterrupt``), at the cost of re-reading up
    to one snapshot interval after a restart. :attr:`exit_code` is what the command returns:
    0 after SIGTERM, 130 after Ctrl-C (the shell's convention for SIGINT).

    >>> stop = GracefulStop("demo")
    >>> stop.requested.is_set(), stop.exit_code
    (False, 0)
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self.requested = threading.Event()
        self.signal: int | None = None

    @property
    def exit_code(self) -> int:
        """0 unless the stop came from Ctrl-C (130)."""
        return 130 if self.signal == signal.SIGINT else 0

    @property
    def reason(self) -> str:
        """``SIGTERM`` or ``Ctrl-C``, for the closing message."""
        return "Ctrl-C" if self.signal == signal.SIGINT else "SIGTERM"

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.signal = signum
        self.requested.set()
        # os.write, not print: a handler may run while the main thread is inside print().
        os.write(2, f"churnwatch {self.command}: stopping cleanly, committing what was read "
                    "(signal again to stop at once)\n".encode())

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """Handle SIGTERM and SIGINT as above inside the block; the old handlers after it."""
        previous = {sig: signal.signal(sig, self._handle)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
