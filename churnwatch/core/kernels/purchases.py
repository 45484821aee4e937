"""Purchases, as columns: the kernel of :class:`churnwatch.core.signals.Purchases`.

Same rules: order lines at the instant of the first or the last order are one purchase
occasion; the first basket is the sum of the earliest order day's orders, whatever the arrival
order; refunds lower the spend, never below 0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

DAY = 86400.0


@njit(cache=True)
def first_basket_after(basket: np.int64, first_day: np.int64, has_first: bool,
                       day: np.int64, amount: float) -> np.int64:
    """:func:`churnwatch.core.signals.first_basket_after` with ``-1`` for unknown."""
    cents = np.int64(np.round(max(amount, 0.0) * 100.0))
    if not has_first or day < first_day:
        return cents
    if day == first_day and basket >= 0:
        return basket + cents
    return basket


@njit(cache=True)
def add_order(row: int, ts: float, amount: float, orders: np.ndarray, first_order: np.ndarray,
              last_order: np.ndarray, spend: np.ndarray, first_basket: np.ndarray) -> float:
    """Fold an order into row ``row``; returns 1.0 for a new purchase occasion, else 0.0."""
    first = first_order[row]
    last = last_order[row]
    has_first = not math.isnan(first)
    first_day = np.int64(math.floor(first / DAY)) if has_first else np.int64(0)
    first_basket[row] = first_basket_after(first_basket[row], first_day, has_first,
                                           np.int64(math.floor(ts / DAY)), amount)
    occasion = 0.0 if (ts == first or ts == last) else 1.0
    orders[row] += np.int32(occasion)
    spend[row] += amount
    if not has_first or ts < first:
        first_order[row] = ts
    if math.isnan(last) or ts > last:
        last_order[row] = ts
    return occasion


@njit(cache=True)
def add_refund(row: int, amount: float, spend: np.ndarray, refunds: np.ndarray) -> None:
    """Fold a refund into row ``row``."""
    refunds[row] += amount
    spend[row] = max(spend[row] - amount, 0.0)
