"""``churnwatch top``: the worklist on the command line, the customers to act on first (the
same pages of the same query as the API's ``/api/v1/customers``, as a table or JSON).

It reads the state a running (or finished) churnwatch left in Redis: pass ``--redis-url`` or
set ``CHURNWATCH_REDIS_URL`` (or ``CHURNWATCH_REDIS_URL_FILE``), and the same ``--config`` the
monitor runs with (segments, shards and key prefix must match). Without a URL it refuses: a
private Redis would be empty. An unreachable Redis or a refused login is a one-line error
(exit 2).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from churnwatch.state.base import config_with_segments
from churnwatch.web.worklist import (
    DEFAULT_TIERS,
    MAX_LIMIT,
    URGENCY,
    BadRequest,
    holdout_action,
    parse_worklist_query,
    worklist_page,
)


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``top``."""
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


def _next_action(row: dict[str, Any]) -> str:
    suggestion = row.get("suggestion")
    if suggestion:
        return f"{suggestion['playbook']} ({suggestion['channel']})"
    if row.get("holdout_playbook"):
        return holdout_action(row["holdout_playbook"])
    return "-"


def _date(text: str | None) -> str:
    return text[:10] if text else "-"
