"""``churnwatch serve``: the customer-success pages, the worklist API and ``/metrics`` on their
own server over a monitor's Redis, read-only (``churnwatch run`` serves the same on its
metrics port)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

#: ``churnwatch serve``'s default port (``churnwatch run`` serves the pages on its metrics port).
SERVE_PORT = 9465


def cmd_serve(args: argparse.Namespace) -> int:
    """``churnwatch serve``: until interrupted (Ctrl-C or SIGTERM)."""
    import signal
    import threading

    from prometheus_client import CollectorRegistry

    from churnwatch.runtime import (
        UsageError,
        check_login,
        config_from_args,
        monitor_redis_url,
        store_factory,
    )
    from churnwatch.web.server import start_metrics_server

    # The monitor's Redis only; a refused login stops here, a Redis that is down shows on the
    # pages and /healthz until it is back.
    args.redis_url = monitor_redis_url(args, "serve")
    check_login(args.redis_url, must_answer=False)
    config = config_from_args(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with store_factory(args, config, max_wait=2.0) as (factory, _url):
        try:
            server = start_metrics_server(args.host, args.port, config, factory,
                                          CollectorRegistry(), None)
        except OSError as exc:
            raise UsageError(f"serve: cannot listen on {args.host or '127.0.0.1'}:{args.port}: "
                             f"{exc.strerror or exc}") from None
        print(f"churnwatch: serving the worklist on {server.url}/", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
    return 0


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``serve``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("serve", help="the customer-success pages and worklist API over a "
                       "monitor's Redis (read-only)",
                       description="Serves /, /customers/<id>, /segments, the JSON API "
                       "(/api/v1/...) and /metrics over the Redis a churnwatch monitor writes. "
                       "The API token comes from $CHURNWATCH_API_TOKEN or the file named by "
                       "$CHURNWATCH_API_TOKEN_FILE; browsers sign in at /login.")
    p.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=SERVE_PORT,
                   help="port (default: %(default)s; 0 picks a free one)")
    add_monitor_options(p)
    p.set_defaults(func=cmd_serve)
