"""Service, as columns: the kernel of :class:`churnwatch.core.signals.Service`.

Decayed tickets (weighted by severity) and feedback (a decay-weighted sum and weight), as of the
newest ticket or feedback; a late one weighs what it would have weighed on time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from churnwatch.core.kernels.trend import decay


@njit(cache=True)
def add(row: int, ts: float, half_life: float, ticket: float, feedback: float,
        has_feedback: bool, tickets: np.ndarray, fb_sum: np.ndarray, fb_weight: np.ndarray,
        svc_ref: np.ndarray) -> None:
    """Add a ticket of severity ``ticket`` (0 for none) and, when ``has_feedback``, a
    ``feedback`` score at ``ts``."""
    ref = svc_ref[row]
    if ts > ref:
        elapsed = ts - ref
        tickets[row] = decay(tickets[row], elapsed, half_life)
        fb_sum[row] = decay(fb_sum[row], elapsed, half_life)
        fb_weight[row] = decay(fb_weight[row], elapsed, half_life)
        svc_ref[row] = ts
        weight = 1.0
    else:
        weight = decay(1.0, ref - ts, half_life)
    tickets[row] += ticket * weight
    if has_feedback:
        fb_sum[row] += feedback * weight
        fb_weight[row] += weight
