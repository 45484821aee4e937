"""The purchase trend, as columns: the kernel of :class:`churnwatch.core.signals.PurchaseTrend`.

Decayed occasions and value over a short and a long half-life, as of the newest order line; a
late line is decayed to that instant instead of moving it, so the windows do not depend on the
arrival order.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LN2 = math.log(2.0)


@njit(cache=True)
def decay(value: float, elapsed: float, half_life: float) -> float:
    """:func:`churnwatch.core.signals.decay`."""
    if elapsed <= 0.0 or value == 0.0:
        return value
    return value * math.exp(-LN2 * elapsed / half_life)


@njit(cache=True)
def _add(value: float, ref: float, ts: float, amount: float, half_life: float) -> float:
    if ts >= ref:
        return decay(value, ts - ref, half_life) + amount
    return value + decay(amount, ref - ts, half_life)


@njit(cache=True)
def add_order_line(row: int, ts: float, occasion: float, amount: float, ord_short: np.ndarray,
                   ord_long: np.ndarray, val_short: np.ndarray, val_long: np.ndarray,
                   trend_ref: np.ndarray, short_half_life: float, long_half_life: float) -> None:
    """Add an order line at ``ts``: ``occasion`` to the frequency, ``amount`` to the value."""
    ref = trend_ref[row]
    ord_short[row] = _add(ord_short[row], ref, ts, occasion, short_half_life)
    ord_long[row] = _add(ord_long[row], ref, ts, occasion, long_half_life)
    val_short[row] = _add(val_short[row], ref, ts, amount, short_half_life)
    val_long[row] = _add(val_long[row], ref, ts, amount, long_half_life)
    if ts >= ref:
        trend_ref[row] = ts
