"""Backtest arithmetic: how well a score ranks the customers who really left.

Pure functions over (score, churned) pairs, so the same figures come out of ``churnwatch
backtest`` and the tests.

>>> roc_auc([0.9, 0.8, 0.3, 0.1], [True, True, False, False])
1.0
>>> roc_auc([1, 1], [True, False])
0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from churnwatch.core.config import TIERS


def roc_auc(risk: Sequence[float], churned: Sequence[bool]) -> float:
    """ROC AUC of ``risk`` (higher = more likely to churn) for the ``churned`` labels; ties
    count one half (the Mann-Whitney statistic with average ranks)."""
    pairs = sorted(zip(risk, churned, strict=True), key=lambda p: p[0])
    n_pos = sum(1 for _, c in pairs if c)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        average_rank = (i + j) / 2.0 + 1.0
        rank_sum += average_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def top_decile_lift(risk: Sequence[float], churned: Sequence[bool]) -> float:
    """Churn share among the riskiest 10 % over the overall churn share."""
    n = len(risk)
    if n == 0:
        return math.nan
    overall = sum(churned) / n
    if overall == 0:
        return math.nan
    ranked = sorted(zip(risk, churned, strict=True), key=lambda p: -p[0])
    top = ranked[: max(1, n // 10)]
    return (sum(1 for _, c in top if c) / len(top)) / overall


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

    @property
    def monotonic(self) -> bool:
        """Whether the churn share rises healthy -> watch -> at_risk -> churned (over the tiers
        that hold customers)."""
        shares = [self.tiers[t][1] for t in TIERS if t in self.tiers and self.tiers[t][0]]
        return all(a <= b for a, b in zip(shares, shares[1:], strict=False))

    def as_dict(self) -> dict[str, object]:
        """Plain data for ``--json``."""
        return {"customers": self.customers, "churned": self.churned,
                "churn_share": self.churned / self.customers if self.customers else None,
                "roc_auc": self.auc, "recency_baseline_roc_auc": self.baseline_auc,
                "top_decile_lift": self.lift, "recency_baseline_top_decile_lift":
                    self.baseline_lift,
                "tiers": {t: {"customers": n, "churn_share": s if n else None}
                          for t, (n, s) in self.tiers.items()},
                "churn_share_monotonic": self.monotonic}

    def render(self) -> str:
        """A human-readable report."""
        lines = [
            f"customers who ordered before the cut-off: {self.customers}",
            f"churned (no order within the horizon):    {self.churned} "
            f"({100 * self.churned / max(self.customers, 1):.1f} %)",
            "",
            f"{'':28}{'churnwatch':>12}{'recency only':>14}",
            f"{'ROC AUC (100 - score)':28}{self.auc:>12.4f}{self.baseline_auc:>14.4f}",
            f"{'top-decile lift':28}{self.lift:>12.2f}{self.baseline_lift:>14.2f}",
            "",
            f"{'tier':12}{'customers':>10}{'churn share':>13}",
        ]
        for tier in TIERS:
            n, share = self.tiers.get(tier, (0, math.nan))
            # An empty tier has no churn share: a dash, not "nan%".
            shown = f"{100 * share:>12.1f}%" if n else f"{'-':>13}"
            lines.append(f"{tier:12}{n:>10}{shown}")
        lines.append("")
        lines.append("churn share rises healthy -> churned: "
                     + ("yes" if self.monotonic else "NO"))
        return "\n".join(lines)


def build_report(rows: Sequence[tuple[float, str, float, bool]]) -> BacktestReport:
    """``rows``: (health score, tier, days since last order, churned) per customer."""
    churned = [r[3] for r in rows]
    risk = [100.0 - r[0] for r in rows]
    silence = [r[2] for r in rows]
    tiers: dict[str, tuple[int, float]] = {}
    for tier in TIERS:
        members = [r[3] for r in rows if r[1] == tier]
        tiers[tier] = (len(members), sum(members) / len(members) if members else math.nan)
    return BacktestReport(
        customers=len(rows), churned=sum(churned), auc=roc_auc(risk, churned),
        baseline_auc=roc_auc(silence, churned), lift=top_decile_lift(risk, churned),
        baseline_lift=top_decile_lift(silence, churned), tiers=tiers)
