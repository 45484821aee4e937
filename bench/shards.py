"""What the shard count costs: ``python -m bench.shards [--redis-url URL]``.

Replays the same simulated shop (``--customers``, ``--days``, seed 7) with ``churnwatch replay
--as-of ... --export ...`` once per shard count and input batch size, each in a fresh process,
and prints the wall time of each (one JSON line per run). Without ``--redis-url`` each run gets
a private Redis; with one (``redis+cluster://...`` for a Redis Cluster) each run writes under its
own key prefix. Not part of ``make bench``: docs/benchmarks.md ("Shard count") has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from churnwatch.simulator import ShopSimulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--shards", default="16,1024", help="comma-separated shard counts")
    parser.add_argument("--batch-sizes", default="5000,50000",
                        help="comma-separated [input] batch_size values")
    parser.add_argument("--redis-url", help="Redis (or redis+cluster://) to use; default: a "
                        "private Redis per run")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="churnwatch-shards-"))
    shop = ShopSimulator(customers=args.customers, seed=7, start=1_700_000_000.0, days=args.days)
    events = list(shop.events())
    log = workdir / "shop.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    as_of = max(float(e["ts"]) for e in events) + 86400.0
    churnwatch = str(Path(sys.executable).parent / "churnwatch")
    for shards in (int(s) for s in args.shards.split(",")):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            prefix = f"bench{shards}b{batch}t{int(time.time())}"
            config = workdir / f"{prefix}.toml"
            config.write_text(f'[state]\nshards = {shards}\nkey_prefix = "{prefix}"\n'
                              f"[input]\nbatch_size = {batch}\n")
            command = [churnwatch, "replay", str(log), "--config", str(config),
                       "--as-of", repr(as_of), "--export", str(workdir / f"{prefix}.csv")]
            # The URL goes through the environment: a command line shows in ps.
            env = dict(os.environ, CHURNWATCH_REDIS_URL=args.redis_url) if args.redis_url \
                else {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_REDIS")}
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env)
            seconds = time.perf_counter() - started
            print(json.dumps({"shards": shards, "batch_size": batch, "events": len(events),
                              "customers": args.customers, "seconds": round(seconds, 2),
                              "events_per_second": round(len(events) / seconds),
                              "redis": "cluster" if args.redis_url and "+cluster" in
                              args.redis_url else "single"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
