"""The zoo's table: several logs' backtests side by side (``make zoo`` writes it to
``var/zoo/zoo.md``; ``bench/zoo.py`` runs the backtests).

Each log is judged twice (:class:`Judged`): ranking figures with the default configuration,
calibration figures with ``[scoring] horizon_days`` set to the judged horizon. :func:`rows`
lays the figures out one line at a time, :func:`markdown` as the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from churnwatch.core.config import TIERS
from churnwatch.judge.measures import format_p
from churnwatch.judge.report import BacktestReport


@dataclass(frozen=True)
class Log:
    """One regime's transaction log, cut-off and judged horizon."""

    key: str
    title: str
    path: Path
    cutoff: float
    horizon_days: float
    truth: dict[str, bool] | None = None


@dataclass
class Judged:
    """A log's two backtests: ranking (default configuration), calibration (judged horizon)."""

    log: Log
    ranking: BacktestReport
    calibration: BacktestReport
    seconds: float


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
