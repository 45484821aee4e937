"""``churnwatch top``, ``churnwatch explain`` and ``churnwatch serve``: the worklist on the command
line, and the customer-success pages on their own server.

Both read the state a running (or finished) churnwatch left in Redis: pass ``--redis-url`` or
set ``CHURNWATCH_REDIS_URL`` (or ``CHURNWATCH_REDIS_URL_FILE``), and the same ``--config`` the
monitor runs with (segments, shards and key prefix must match). Without a URL they refuse: a
private Redis would be empty. An unreachable Redis or a refused login is a one-line error
(exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from churnwatch.metrics.worklist import (
    DEFAULT_TIERS,
    MAX_LIMIT,
    URGENCY,
    BadRequest,
    customer_detail,
    holdout_action,
    parse_worklist_query,
    worklist_page,
)
from churnwatch.state.base import config_with_segments

#: ``churnwatch serve``'s default port (``churnwatch run`` serves the pages on its metrics port).
SERVE_PORT = 9465


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``top`` and ``explain`` to the ``churnwatch`` command."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("top", help="the customers to act on first (the CS worklist)",
                       description=f"Customers in the given tiers, most urgent first: {URGENCY}.")
    p.add_argument("--tier", default=",".join(DEFAULT_TIERS),
                   help="comma-separated tiers: healthy, watch, at_risk, churned "
                   "(default: %(default)s)")
    p.add_argument("--segment", help="comma-separated segments (default: all)")
    p.add_argument("--value-tier", choices=("high", "standard"),
                   help="only high-value customers, or only the others")
    p.add_argument("--limit", type=int, default=20, help=f"1..{MAX_LIMIT} (default: 20)")
    p.add_argument("--offset", type=int, default=0, help="skip this many (default: 0)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    add_monitor_options(p)
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("explain", help="one customer's score, components, reasons and history")
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    add_monitor_options(p)
    p.set_defaults(func=cmd_explain)

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

    p = sub.add_parser("reindex", help="rebuild the worklist's urgency index from the stored "
                       "customers (once, after upgrading from a version without it)")
    add_monitor_options(p)
    p.set_defaults(func=cmd_reindex)


def cmd_top(args: argparse.Namespace) -> int:
    """``churnwatch top``."""
    from churnwatch.runtime import UsageError, config_from_args, monitor_store

    config = config_from_args(args)
    params = {"tier": [args.tier], "limit": [str(args.limit)], "offset": [str(args.offset)]}
    if args.segment:
        params["segment"] = [args.segment]
    if args.value_tier:
        params["value_tier"] = [args.value_tier]
    with monitor_store(args, config, "top") as store:
        config = config_with_segments(store, config)  # the shop's own segments too
        try:
            query = parse_worklist_query(params, config)
        except BadRequest as exc:
            raise UsageError(f"--{exc.parameter.replace('_', '-')}: {exc.message}") from None
        page = worklist_page(store, config, query)
    if args.json:
        print(json.dumps(page.as_dict(), indent=2))
        return 0
    print(render_top(page.as_dict()))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """``churnwatch explain CUSTOMER_ID``; exit code 1 for an unknown customer."""
    from churnwatch.runtime import config_from_args, monitor_store

    config = config_from_args(args)
    with monitor_store(args, config, "explain") as store:
        detail = customer_detail(store, config_with_segments(store, config), args.customer_id)
    if detail is None:
        print(f"churnwatch: unknown customer {args.customer_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(detail, indent=2) if args.json else render_explain(detail))
    return 0


def render_top(page: dict[str, Any]) -> str:
    """The worklist page as a fixed-width table."""
    rows = page["customers"]
    if not rows:
        return "no customer matches (is --redis-url the monitor's Redis?)"
    header = ("#", "customer", "segment", "tier", "score", "value", "tier since", "last order",
              "next action")
    lines = [header]
    for number, row in enumerate(rows, page["offset"] + 1):
        lines.append((str(number), row["customer_id"], row["segment"], row["tier"],
                      f"{row['health_score']:.1f}", "high" if row["high_value"] else "",
                      _date(row["tier_since"]), _date(row["last_order"]), _next_action(row)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    shown = f"{page['offset'] + 1}-{page['offset'] + len(rows)}"
    text.append(f"{shown} of {page['total']} ({page['order']})")
    return "\n".join(text)


def render_explain(detail: dict[str, Any]) -> str:
    """One customer, for a person."""
    value = " (high value)" if detail["high_value"] else ""
    lines = [
        f"{detail['customer_id']}: {detail['tier']}, health score {_score(detail)}{value}"
        + (f": {100 * detail['return_probability']:.0f}% likely to order within "
           f"{detail['horizon']}" if detail.get("horizon") else ""),
        f"  segment {detail['segment']}, {detail['orders']} orders, spend "
        f"{detail['spend']:.2f}, last order {detail['last_order'] or 'none'}",
        f"  scored at {detail['scored_at']}, in this tier since {detail['tier_since']}"
        + (f", next review {detail['next_review_at']}" if detail["next_review_at"] else ""),
        "  components: " + ", ".join(
            f"{name} {'-' if v is None else v}" for name, v in detail["components"].items()),
    ]
    if detail.get("suggestion"):
        suggestion = detail["suggestion"]
        lines.append(f"  next action ({suggestion['playbook']}, {suggestion['channel']}): "
                     f"{suggestion['action']}")
    elif detail.get("holdout_playbook"):
        lines.append(f"  next action: {holdout_action(detail['holdout_playbook'])}")
    if detail["reasons"]:
        lines.append("  why:")
        lines.extend(f"    - {reason}" for reason in detail["reasons"])
    if detail["transitions"]:
        lines.append("  tier changes (newest first):")
        for t in detail["transitions"]:
            old = "-" if t.get("old_score") is None else f"{t['old_score']:.1f}"
            lines.append(f"    {t['at']}  {t['from']} -> {t['to']}  score {old} -> "
                         f"{t['new_score']:.1f}  ({t.get('cause', '')})")
            if t.get("reasons"):
                lines.append(f"      {t['reasons'][0]}")
    return "\n".join(lines)


def _next_action(row: dict[str, Any]) -> str:
    suggestion = row.get("suggestion")
    if suggestion:
        return f"{suggestion['playbook']} ({suggestion['channel']})"
    if row.get("holdout_playbook"):
        return holdout_action(row["holdout_playbook"])
    return "-"


def cmd_serve(args: argparse.Namespace) -> int:
    """``churnwatch serve``: until interrupted (Ctrl-C or SIGTERM)."""
    import signal
    import threading

    from churnwatch.metrics.exporter import start_metrics_server
    from prometheus_client import CollectorRegistry

    from churnwatch.runtime import (
        UsageError,
        check_login,
        config_from_args,
        monitor_redis_url,
        store_factory,
    )

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


def _score(detail: dict[str, Any]) -> str:
    score = detail["health_score"]
    return "none" if score is None else f"{score:.1f}"


def _date(text: str | None) -> str:
    return text[:10] if text else "-"
