"""What every command shares: configuration loading, the state store it runs against, time
options and the one-line usage error.

The CLI (``churnwatch.cli``) only wires commands together; the command modules (replay, live,
demo, publish, the worklist, ...) import what they share from here, never from the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator

from churnwatch.core.config import ChurnwatchConfig, load_config
from churnwatch.core.events import ContractViolation, parse_timestamp
from churnwatch.embedded import redis_url_or_embedded
from churnwatch.state.base import StateStore
from churnwatch.state.redis_store import RedisStore


class UsageError(Exception):
    """A bad argument or an unusable environment; reported in one line with exit code 2."""


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
                               observer=observer, max_wait=max_wait)  # type: ignore[arg-type]
            stores.append(store)
            return store

        try:
            yield factory, url
        finally:
            for store in stores:
                store.close()


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--redis-url``, as every command that touches state takes them."""
    parser.add_argument("--config", help="TOML configuration (default: built-in defaults, or "
                        "$CHURNWATCH_CONFIG)")
    parser.add_argument("--redis-url", help="Redis to use (default: $CHURNWATCH_REDIS_URL, else "
                        "a private embedded Redis for the duration of the command)")
