"""Generate the churnwatch Grafana dashboards and write them to `dashboards/json/<uid>.json`.

    python -m churnwatch.dashboards.build           # regenerate the committed JSON
    python -m churnwatch.dashboards.build --check   # exit 1 if the committed JSON is stale

The JSON is what Grafana provisions (deploy/grafana) and what `push.py` uploads; it is committed
so a reviewer sees every change to a dashboard as a diff.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.models.dashboard import Dashboard

from . import overview, pipeline, segment
from .common import render

JSON_DIR = Path(__file__).resolve().parent / "json"

BUILDERS: tuple[Callable[[], Dashboard], ...] = (overview.build, segment.build, pipeline.build)


def generate() -> dict[str, str]:
    """Every dashboard's uid and its JSON text, as it should be committed."""
    rendered: dict[str, str] = {}
    for build in BUILDERS:
        dashboard = build()
        if not dashboard.uid:
            raise ValueError(f"{build.__module__}.build() made a dashboard without a uid")
        if dashboard.uid in rendered:
            raise ValueError(f"two dashboards share the uid {dashboard.uid!r}")
        rendered[dashboard.uid] = render(dashboard)
    return rendered


def stale_files(directory: Path = JSON_DIR) -> list[str]:
    """Files under `directory` that differ from the generated dashboards (or are missing/extra)."""
    expected = {f"{uid}.json": text for uid, text in generate().items()}
    present = {path.name for path in directory.glob("*.json")} if directory.is_dir() else set()
    stale = [
        name
        for name, text in expected.items()
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    ]
    stale += sorted(present - expected.keys())
    return sorted(stale)


def write(directory: Path = JSON_DIR) -> list[Path]:
    """Write every dashboard to `directory/<uid>.json`, removing JSON of dashboards gone."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = generate()
    written = []
    for uid, text in rendered.items():
        path = directory / f"{uid}.json"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for path in directory.glob("*.json"):
        if path.stem not in rendered:
            path.unlink()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m churnwatch.dashboards.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the committed JSON differs from the generated dashboards",
    )
    parser.add_argument(
        "--out", type=Path, default=JSON_DIR, help=f"output directory (default {JSON_DIR})"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(
                f"dashboards out of date in {args.out}: {', '.join(stale)}; "
                "run `python -m churnwatch.dashboards.build`",
                file=sys.stderr,
            )
            return 1
        print(f"dashboards in {args.out} are up to date")
        return 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
