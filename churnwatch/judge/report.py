"""The backtest's report: each customer's outcome beside what churnwatch and the classic models
said at the cut-off, judged with :mod:`churnwatch.judge.measures` into ranking, calibration and
tier figures (:class:`BacktestReport`), rendered as text or JSON.

``churnwatch backtest`` (:func:`churnwatch.backtest.backtest`) and the zoo of regimes build one
per log; nothing here runs the dataflow or reads a store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from churnwatch.core.config import TIERS, SegmentPolicy
from churnwatch.judge.measures import (
    BANDS,
    AucDifference,
    Band,
    auc_difference,
    brier,
    brier_skill,
    calibration_error,
    format_p,
    reliability,
    roc_auc,
    top_decile_lift,
)


@dataclass(frozen=True)
class CustomerOutcome:
    """One judged customer: what churnwatch said at the cut-off, the plain facts of their
    history before it, and whether they churned."""

    health_score: float
    tier: str
    return_probability: float
    days_since_last_order: float
    orders: int
    churned: bool


@dataclass(frozen=True)
class Prediction:
    """A classic model's answers for the same customers, in the same order."""

    name: str
    p_purchase: Sequence[float]
    expected_purchases: Sequence[float]
    detail: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbabilityFigures:
    """How well one predictor's P(an order within the horizon) comes true."""

    mean_predicted: float
    brier: float
    brier_skill: float
    calibration_error: float
    bands: tuple[Band, ...]

    @classmethod
    def of(cls, probability: Sequence[float], returned: Sequence[bool]) -> ProbabilityFigures:
        """Every calibration figure of ``probability``."""
        n = len(probability)
        return cls(sum(probability) / n if n else math.nan, brier(probability, returned),
                   brier_skill(probability, returned), calibration_error(probability, returned),
                   tuple(reliability(probability, returned)))

    def as_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        return {"mean_predicted": self.mean_predicted, "brier": self.brier,
                "brier_skill": self.brier_skill, "calibration_error": self.calibration_error,
                "reliability": [{"band": f"{b.low:.1f}-{b.high:.1f}", "customers": b.customers,
                                 "mean_predicted": _nan_none(b.mean_predicted),
                                 "observed": _nan_none(b.observed)} for b in self.bands]}


@dataclass(frozen=True)
class RankingFigures:
    """How well one risk ranks the churned first; for a ranking other than churnwatch's,
    ``behind_churnwatch`` is churnwatch's AUC minus this one's, with its standard error."""

    auc: float
    lift: float
    behind_churnwatch: AucDifference | None = None

    def as_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        data: dict[str, object] = {"roc_auc": self.auc, "top_decile_lift": self.lift}
        versus = self.behind_churnwatch
        if versus is not None:
            data["churnwatch_minus_this"] = {
                "roc_auc": _nan_none(versus.difference),
                "standard_error": _nan_none(versus.standard_error),
                "p_value": _nan_none(versus.p_value)}
        return data

    def render(self, name: str) -> str:
        """One line of the ranking table."""
        line = f"  {name:48}{self.auc:>9.4f}{self.lift:>17.2f}"
        versus = self.behind_churnwatch
        if versus is not None and not math.isnan(versus.difference):
            line += (f"{versus.difference:>+13.4f} ± {versus.standard_error:.4f}"
                     f"  p {format_p(versus.p_value)}")
        return line


@dataclass
class BacktestReport:
    """The figures ``churnwatch backtest`` prints."""

    customers: int
    churned: int
    auc: float
    baseline_auc: float
    lift: float
    baseline_lift: float
    tiers: dict[str, tuple[int, float]] = field(default_factory=dict)
    horizon_days: float = math.nan
    probability_horizon_days: float | None = None
    #: Per segment, the horizon(s) its return_probability and tiers are about, and whether
    #: they were learned from the shop's reorders (no ``horizon_days`` configured).
    horizons: dict[str, list[float]] = field(default_factory=dict)
    horizons_learned: bool = False
    #: Customers whose health score lies outside their tier's band widened by the hysteresis
    #: (:func:`outside_their_tier`): none when tier and score are one scale.
    incoherent: int = 0
    #: Risk rankings by name: churnwatch, the classic models, the plain baselines.
    ranking: dict[str, RankingFigures] = field(default_factory=dict)
    #: Calibration of P(an order within the horizon): churnwatch, the classic models.
    calibration: dict[str, ProbabilityFigures] = field(default_factory=dict)
    classic_detail: dict[str, Mapping[str, object]] = field(default_factory=dict)
    #: Where the truth is known (a simulated shop): the same rankings against who has really
    #: left by the cut-off, whether or not they happened to order within the horizon.
    ranking_truth: dict[str, RankingFigures] = field(default_factory=dict)

    @property
    def base_rate(self) -> float:
        """The share of customers who ordered again within the horizon."""
        return 1.0 - self.churned / self.customers if self.customers else math.nan

    @property
    def populated_tiers(self) -> int:
        """How many tiers hold at least one customer."""
        return sum(1 for t in TIERS if self.tiers.get(t, (0, 0.0))[0] > 0)

    @property
    def monotonic(self) -> bool:
        """Whether the churn share rises strictly healthy -> watch -> at_risk -> churned (over
        the tiers that hold customers)."""
        shares = [self.tiers[t][1] for t in TIERS if t in self.tiers and self.tiers[t][0]]
        return all(a < b for a, b in zip(shares, shares[1:], strict=False))

    def as_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        return {"customers": self.customers, "churned": self.churned,
                "churn_share": self.churned / self.customers if self.customers else None,
                "base_rate_returned": self.base_rate,
                "horizon_days": self.horizon_days,
                "return_probability_horizon_days": self.probability_horizon_days,
                "horizons_by_segment": self.horizons,
                "horizons_learned": self.horizons_learned,
                "customers_outside_their_tier": self.incoherent,
                "roc_auc": self.auc, "recency_baseline_roc_auc": self.baseline_auc,
                "top_decile_lift": self.lift, "recency_baseline_top_decile_lift":
                    self.baseline_lift,
                "ranking": {name: f.as_dict() for name, f in self.ranking.items()},
                "calibration": {name: f.as_dict() for name, f in self.calibration.items()},
                "classic_models": {name: dict(d) for name, d in self.classic_detail.items()},
                "ranking_against_truth": {name: f.as_dict()
                                          for name, f in self.ranking_truth.items()},
                "tiers": {t: {"customers": n, "churn_share": _nan_none(s)} for t, (n, s) in
                          self.tiers.items()},
                "churn_share_monotonic": self.monotonic,
                "tiers_populated": self.populated_tiers}

    def _horizon_lines(self) -> list[str]:
        """What the scores' chances are about: the horizon of each segment."""
        if not self.horizons:
            return []
        how = "learned from the shop's reorders" if self.horizons_learned else "configured"
        said = "; ".join(f"{segment} {' / '.join(f'{h:g}' for h in days)} days"
                         for segment, days in self.horizons.items())
        return [f"horizon of return_probability and tiers ({how}): {said}"]

    def render(self) -> str:
        """A human-readable report."""
        horizon = f"{self.horizon_days:g}"
        lines = [
            f"customers who ordered before the cut-off: {self.customers}",
            f"churned (no order within {horizon} days):  {self.churned} "
            f"({100 * self.churned / max(self.customers, 1):.1f} %)",
            *self._horizon_lines(),
            "",
            f"ranking: who churned first{'':24}{'ROC AUC':>9}{'top-decile lift':>17}"
            f"{'churnwatch ahead by (paired DeLong test)':>44}",
        ]
        lines += [fig.render(name) for name, fig in self.ranking.items()]
        if self.ranking_truth:
            lines += ["", "ranking against who has really left by the cut-off"]
            lines += [fig.render(name) for name, fig in self.ranking_truth.items()]
        if self.calibration:
            lines += ["", f"calibration: P(an order within {horizon} days)"
                      f"{'':6}{'mean':>7}{'Brier':>8}{'skill':>8}{'ECE':>8}",
                      f"  {'observed share (base rate)':48}{self.base_rate:>7.3f}"
                      f"{self.base_rate * (1 - self.base_rate):>8.4f}{0.0:>+8.3f}"]
            for name, cal in self.calibration.items():
                lines.append(f"  {name:48}{cal.mean_predicted:>7.3f}{cal.brier:>8.4f}"
                             f"{cal.brier_skill:>+8.3f}{cal.calibration_error:>8.3f}")
            if (self.probability_horizon_days is not None
                    and abs(self.probability_horizon_days - self.horizon_days) > 1e-9):
                lines.append(f"  note: return_probability is for horizon_days = "
                             f"{self.probability_horizon_days:g}, judged "
                             f"over {horizon}; set [scoring] horizon_days = {horizon} to judge "
                             "its calibration")
            lines += ["", "reliability: customers, mean predicted, observed share per band"]
            names = list(self.calibration)
            lines.append(f"  {'':9}" + "".join(f"{n.split(':')[0]:>30}" for n in names))
            lines.append(f"  {'band':9}" + f"{'customers':>11}{'predicted':>10}{'observed':>9}"
                         * len(names))
            for index in range(BANDS):
                cells = []
                for name in names:
                    b = self.calibration[name].bands[index]
                    cells.append(f"{b.customers:>11}{b.mean_predicted:>10.3f}{b.observed:>9.3f}"
                                 if b.customers else f"{b.customers:>11}{'-':>10}{'-':>9}")
                band = self.calibration[names[0]].bands[index]
                lines.append(f"  {band.low:.1f}-{band.high:.1f}  " + "".join(cells))
        lines += ["", f"{'tier':12}{'customers':>10}{'churn share':>13}"]
        for tier in TIERS:
            n, share = self.tiers.get(tier, (0, math.nan))
            lines.append(f"{tier:12}{n:>10}" + (f"{100 * share:>12.1f}%" if n else f"{'-':>13}"))
        lines.append("")
        lines.append("tiers: churn share rises strictly healthy -> churned: "
                     + ("yes" if self.monotonic else "NO"))
        lines.append(f"tiers populated: {self.populated_tiers} of {len(TIERS)} (at least 3: "
                     + ("yes" if self.populated_tiers >= 3 else "NO") + ")")
        return "\n".join(lines)


def _nan_none(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def _rankings(risks: Mapping[str, Sequence[float]], churned: Sequence[bool]
              ) -> dict[str, RankingFigures]:
    """Each risk's figures; every ranking after the first (churnwatch's) compared with it."""
    first = next(iter(risks.values()))
    return {name: RankingFigures(roc_auc(values, churned), top_decile_lift(values, churned),
                                 None if values is first else
                                 auc_difference(first, values, churned))
            for name, values in risks.items()}


def outside_their_tier(score: float, tier: str, policy: SegmentPolicy) -> bool:
    """Whether a customer's health score lies outside their tier's band widened by the
    hysteresis: then a customer of the same segment with a lower score could sit in a better
    tier, beyond what hysteresis explains.

    >>> from churnwatch.core.config import SegmentPolicy
    >>> p = SegmentPolicy()  # healthy >= 65, watch >= 45, at_risk >= 25, hysteresis 3
    >>> outside_their_tier(63.0, "healthy", p), outside_their_tier(61.9, "healthy", p)
    (False, True)
    >>> outside_their_tier(67.9, "watch", p), outside_their_tier(68.0, "watch", p)
    (False, True)
    """
    index = TIERS.index(tier)
    bounds = (math.inf, *policy.boundaries, -math.inf)
    return not bounds[index + 1] - policy.hysteresis <= score < bounds[index] + policy.hysteresis


def build_report(outcomes: Sequence[CustomerOutcome], classic: Sequence[Prediction] = (),
                 horizon_days: float = math.nan,
                 probability_horizon_days: float | None = None,
                 truth: Sequence[bool] | None = None,
                 horizons: dict[str, list[float]] | None = None,
                 horizons_learned: bool = False, incoherent: int = 0) -> BacktestReport:
    """Every figure for ``outcomes``, beside the ``classic`` models' predictions for the same
    customers in the same order (and, given ``truth``, whether each has really left)."""
    churned = [o.churned for o in outcomes]
    returned = [not c for c in churned]
    risk = [100.0 - o.health_score for o in outcomes]
    silence = [o.days_since_last_order for o in outcomes]
    fewer_orders = [-float(o.orders) for o in outcomes]
    tiers: dict[str, tuple[int, float]] = {}
    for tier in TIERS:
        members = [o.churned for o in outcomes if o.tier == tier]
        tiers[tier] = (len(members), sum(members) / len(members) if members else math.nan)

    risks = {"churnwatch: 100 - health_score": risk}
    for model in classic:
        risks[f"{model.name}: fewer expected orders"] = [-float(e)
                                                         for e in model.expected_purchases]
    risks["time since last order"] = silence
    risks["order count (fewer = riskier)"] = fewer_orders
    ranking = _rankings(risks, churned)
    ranking_truth = {} if truth is None else _rankings(risks, truth)
    calibration = {"churnwatch: return_probability": ProbabilityFigures.of(
        [o.return_probability for o in outcomes], returned)}
    for model in classic:
        calibration[f"{model.name}: P(at least one order)"] = ProbabilityFigures.of(
            [float(p) for p in model.p_purchase], returned)
    main, recency = ranking["churnwatch: 100 - health_score"], ranking["time since last order"]
    return BacktestReport(
        customers=len(outcomes), churned=sum(churned), auc=main.auc, baseline_auc=recency.auc,
        lift=main.lift, baseline_lift=recency.lift, tiers=tiers, horizon_days=horizon_days,
        probability_horizon_days=probability_horizon_days, ranking=ranking,
        calibration=calibration, classic_detail={m.name: m.detail for m in classic},
        ranking_truth=ranking_truth, horizons=dict(horizons or {}),
        horizons_learned=horizons_learned, incoherent=incoherent)
