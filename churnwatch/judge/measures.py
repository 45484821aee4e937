"""Backtest arithmetic: how well a score ranks the customers who left, and whether a predicted
chance of returning comes true as often as it says.

Pure functions over plain per-customer rows, so the same figures come out of ``churnwatch
backtest`` (its report: :mod:`churnwatch.judge.report`), the zoo of regimes (``bench/zoo.py``)
and the tests. The labels are the issue's:
a customer is anyone with an order before the cut-off; they *churned* when no order follows
within the judged horizon after it, and *returned* otherwise.

>>> roc_auc([0.9, 0.8, 0.3, 0.1], [True, True, False, False])
1.0
>>> roc_auc([1, 1], [True, False])
0.5
>>> round(brier([0.8, 0.2], [True, False]), 3), round(brier_skill([0.8, 0.2], [True, False]), 3)
(0.04, 0.84)

Two rankings of the same customers differ by chance as well as by skill: ``auc_difference``
says by how much, with the standard error of the difference (DeLong's paired test), so a
0.001 lead is not read as a win.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

#: Equal-width probability bands of the reliability table and the calibration error.
BANDS = 10


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


@dataclass(frozen=True)
class AucDifference:
    """ROC AUC of ranking ``a`` minus that of ranking ``b`` over the same customers, with the
    standard error of the difference and the two-sided p-value of "no difference" (DeLong,
    DeLong and Clarke-Pearson, 1988: paired, so what the two rankings share cancels out)."""

    difference: float
    standard_error: float
    p_value: float


def auc_difference(risk_a: Sequence[float], risk_b: Sequence[float],
                   churned: Sequence[bool]) -> AucDifference:
    """Compare two rankings of the same customers (higher = more likely to churn).

    Each customer's *placement* under a ranking is the share of the other class it is ranked
    correctly against (ties one half); an AUC is the mean placement of the churned, and the
    variance of the difference of two AUCs follows from the covariances of the placements.

    >>> churned = [True, True, True, False, False, False]
    >>> same = auc_difference([6, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1], churned)
    >>> same.difference, same.standard_error, same.p_value
    (0.0, 0.0, 1.0)
    >>> d = auc_difference([6, 5, 4, 3, 2, 1], [6, 2, 4, 3, 5, 1], churned)
    >>> round(d.difference, 3), round(d.standard_error, 3), round(d.p_value, 2)
    (0.333, 0.272, 0.22)
    """
    labels = np.asarray(churned, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos < 2 or n_neg < 2:
        return AucDifference(math.nan, math.nan, math.nan)
    positive, negative = [], []
    for risk in (risk_a, risk_b):
        values = np.asarray(risk, dtype=float)
        ranks = stats.rankdata(values)
        # Placement of a churned customer: the share of returners ranked below it; of a
        # returner: the share of the churned ranked above it (ties one half each).
        positive.append((ranks[labels] - stats.rankdata(values[labels])) / n_neg)
        negative.append(1.0 - (ranks[~labels] - stats.rankdata(values[~labels])) / n_pos)
    difference = float(positive[0].mean() - positive[1].mean())
    cov = np.cov(np.vstack(positive)) / n_pos + np.cov(np.vstack(negative)) / n_neg
    variance = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
    error = math.sqrt(variance)
    if error == 0.0:
        return AucDifference(difference, 0.0, 1.0 if difference == 0.0 else 0.0)
    return AucDifference(difference, error,
                         float(special.erfc(abs(difference) / error / math.sqrt(2.0))))


def format_p(p_value: float) -> str:
    """A p-value as a reader wants it: ``< 0.001`` rather than ``0.000``.

    >>> format_p(0.0004), format_p(0.0912), format_p(1.0)
    ('< 0.001', '0.091', '1.000')
    """
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


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


def brier(probability: Sequence[float], returned: Sequence[bool]) -> float:
    """Mean squared error of a predicted probability against what happened (0 is perfect).

    >>> brier([1.0, 0.0], [True, False]), brier([0.5, 0.5], [True, False])
    (0.0, 0.25)
    """
    n = len(probability)
    if n == 0:
        return math.nan
    return sum((p - float(r)) ** 2 for p, r in zip(probability, returned, strict=True)) / n


def brier_skill(probability: Sequence[float], returned: Sequence[bool]) -> float:
    """``1 - Brier / Brier of the base rate``: 0 is no better than telling every customer the
    observed share, negative is worse, 1 is perfect.

    >>> brier_skill([0.5, 0.5], [True, False])
    0.0
    >>> brier_skill([0.9, 0.9], [True, False]) < 0
    True
    """
    n = len(returned)
    if n == 0:
        return math.nan
    base = sum(returned) / n
    reference = base * (1.0 - base)
    if reference == 0.0:
        return math.nan
    return 1.0 - brier(probability, returned) / reference


@dataclass(frozen=True)
class Band:
    """One row of a reliability table: the customers predicted within ``[low, high)``."""

    low: float
    high: float
    customers: int
    mean_predicted: float
    observed: float


def reliability(probability: Sequence[float], returned: Sequence[bool], bands: int = BANDS
                ) -> list[Band]:
    """Customers per equal-width band of predicted probability, the band's mean prediction and
    the share that really returned (1.0 falls in the top band).

    >>> [(b.customers, b.mean_predicted, b.observed) for b in
    ...  reliability([0.05, 0.15, 0.95, 1.0], [False, True, True, True], bands=2)]
    [(2, 0.1, 0.5), (2, 0.975, 1.0)]
    """
    members: list[list[tuple[float, bool]]] = [[] for _ in range(bands)]
    for p, r in zip(probability, returned, strict=True):
        index = min(max(int(p * bands), 0), bands - 1)
        members[index].append((p, r))
    table = []
    for index, rows in enumerate(members):
        n = len(rows)
        table.append(Band(index / bands, (index + 1) / bands, n,
                          sum(p for p, _ in rows) / n if n else math.nan,
                          sum(1 for _, r in rows if r) / n if n else math.nan))
    return table


def calibration_error(probability: Sequence[float], returned: Sequence[bool],
                      bands: int = BANDS) -> float:
    """Expected calibration error: the customer-weighted mean gap between predicted and
    observed share over equal-width bands.

    >>> round(calibration_error([0.05, 0.15, 0.95, 1.0], [False, True, True, True], bands=2), 4)
    0.2125
    """
    table = reliability(probability, returned, bands)
    n = sum(b.customers for b in table)
    if n == 0:
        return math.nan
    return sum(b.customers * abs(b.mean_predicted - b.observed) for b in table if b.customers) / n


