"""``churnwatch dashboards``: build the dashboards' JSON, or push it to a running Grafana."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path


def cmd_push(args: argparse.Namespace) -> int:
    """Upload every dashboard to ``--grafana-url``; the token comes from the environment or a
    file, never from the command line."""
    from churnwatch.dashboards.push import push_dashboards

    token = os.environ.get("GRAFANA_TOKEN")
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    basic = None
    if not token and os.environ.get("GRAFANA_USER") and os.environ.get("GRAFANA_PASSWORD"):
        basic = (os.environ["GRAFANA_USER"], os.environ["GRAFANA_PASSWORD"])
    pushed = push_dashboards(args.grafana_url, token, folder=args.folder, basic_auth=basic)
    for uid in pushed:
        print(f"pushed {uid} to {args.grafana_url}", file=sys.stderr)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Regenerate dashboards/json (``--check``: fail if the committed JSON is stale)."""
    from churnwatch.dashboards import build

    return int(build.main(["--check"] if args.check else []) or 0)


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``dashboards push`` and ``dashboards build``."""
    p = sub.add_parser("dashboards", help="Grafana dashboards as code")
    dsub = p.add_subparsers(dest="dashboards_command", required=True)
    push = dsub.add_parser("push", help="upload the dashboards to a running Grafana "
                           "(token from $GRAFANA_TOKEN or --token-file)")
    push.add_argument("--grafana-url", required=True)
    push.add_argument("--folder", default="churnwatch")
    push.add_argument("--token-file", help="a file holding a Grafana service-account token")
    push.set_defaults(func=cmd_push)
    build = dsub.add_parser("build", help="regenerate dashboards/json from the code")
    build.add_argument("--check", action="store_true", help="only check it is up to date")
    build.set_defaults(func=cmd_build)
