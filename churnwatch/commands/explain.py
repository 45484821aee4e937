"""``churnwatch explain CUSTOMER_ID``: one customer's score, components, reasons, suggested
action and tier history, as text or the API's JSON.

It reads the monitor's Redis as ``churnwatch top`` does (:mod:`churnwatch.commands.top`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from churnwatch.state.base import config_with_segments
from churnwatch.web.worklist import (
    customer_detail,
    holdout_action,
)


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


def _score(detail: dict[str, Any]) -> str:
    score = detail["health_score"]
    return "none" if score is None else f"{score:.1f}"


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``explain``."""
    from churnwatch.runtime import add_monitor_options

    p = sub.add_parser("explain", help="one customer's score, components, reasons and history")
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    add_monitor_options(p)
    p.set_defaults(func=cmd_explain)
