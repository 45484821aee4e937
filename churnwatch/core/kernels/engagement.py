"""Engagement, as columns: the kernel of :class:`churnwatch.core.signals.Engagement`.

Per channel the five counters (sent, opened, clicked, message sent, replied) in one row of 25,
decayed as of the newest engagement event; ``channel_seen`` marks the channels that have had an
event (the reference keeps only those in its dictionary).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from churnwatch.core.kernels.trend import decay

COUNTERS = 5


@njit(cache=True)
def add(row: int, channel: int, slot: int, ts: float, channels: np.ndarray,
        channel_seen: np.ndarray, eng_ref: np.ndarray, half_life: float) -> None:
    """Count one engagement event (counter ``slot``) on ``channel`` at ``ts``."""
    channel_seen[row] |= np.uint8(1 << channel)
    ref = eng_ref[row]
    counters = channels[row]
    if ts > ref:
        elapsed = ts - ref
        for i in range(counters.shape[0]):
            counters[i] = decay(counters[i], elapsed, half_life)
        eng_ref[row] = ts
        counters[channel * COUNTERS + slot] += 1.0
    else:
        counters[channel * COUNTERS + slot] += decay(1.0, ref - ts, half_life)
