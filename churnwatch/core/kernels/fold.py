"""A micro-batch folded into the customer table, in arrival order: the kernel of the per-event
steps of :class:`churnwatch.core.engine.ShardEngine` (dedupe, lateness, apply, remember).

Each event gets a status (:data:`APPLIED`, :data:`LATE`, :data:`DUPLICATE`, :data:`TOO_LATE`);
what the shard's priors learn from the applied orders, and profiles and interventions (strings
and dictionaries), are left to Python (:mod:`churnwatch.core.columnar`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from churnwatch.core.kernels import engagement, purchases, service, trend

#: Event type codes, in the order of :data:`churnwatch.core.event_batch.TYPE_CODES`.
(ORDER, REFUND, CAMPAIGN_SENT, CAMPAIGN_OPENED, CAMPAIGN_CLICKED, MESSAGE_SENT, MESSAGE_REPLIED,
 SUPPORT_TICKET, FEEDBACK, VISIT, PROFILE, INTERVENTION) = range(12)
#: What became of an event.
APPLIED, LATE, DUPLICATE, TOO_LATE = range(4)


@njit(cache=True)
def fold_batch(rows: np.ndarray, types: np.ndarray, ts: np.ndarray, amount: np.ndarray,
               channel: np.ndarray, score: np.ndarray, severity: np.ndarray,
               id_hash: np.ndarray, has_id: np.ndarray, lateness: float,
               half_lives: np.ndarray, table_score: np.ndarray, last_event_ts: np.ndarray,
               first_seen: np.ndarray, orders: np.ndarray, first_order: np.ndarray,
               last_order: np.ndarray, spend: np.ndarray, refunds: np.ndarray,
               first_basket: np.ndarray, ord_short: np.ndarray, ord_long: np.ndarray,
               val_short: np.ndarray, val_long: np.ndarray, trend_ref: np.ndarray,
               channels: np.ndarray, channel_seen: np.ndarray, eng_ref: np.ndarray,
               tickets: np.ndarray, fb_sum: np.ndarray, fb_weight: np.ndarray,
               svc_ref: np.ndarray, recent_ids: np.ndarray, recent_count: np.ndarray,
               status: np.ndarray, gap_before: np.ndarray) -> None:
    """Fold events ``0..n-1`` (row, type code, time and fields per event) into the columns.

    ``half_lives`` are the trend's short and long, engagement's and service's, in seconds.
    ``status`` receives each event's fate; ``gap_before`` the seconds since the customer's
    previous latest order for an order that becomes their latest (``nan`` otherwise).
    """
    for i in range(rows.shape[0]):
        row = rows[i]
        t = ts[i]
        gap_before[i] = math.nan
        # Dedupe by event id: the customer's newest ids.
        if has_id[i]:
            duplicate = False
            for k in range(recent_count[row]):
                if recent_ids[row, k] == id_hash[i]:
                    duplicate = True
            if duplicate:
                status[i] = DUPLICATE
                continue
        state = APPLIED
        if not math.isnan(table_score[row]) and t < last_event_ts[row]:
            if t >= last_event_ts[row] - lateness:
                state = LATE
            else:
                status[i] = TOO_LATE
                continue
        status[i] = state
        if t > last_event_ts[row]:
            last_event_ts[row] = t
        if t < first_seen[row]:
            first_seen[row] = t
        kind = types[i]
        if kind == ORDER:
            last = last_order[row]
            if not math.isnan(last) and t > last:
                gap_before[i] = t - last
            occasion = purchases.add_order(row, t, amount[i], orders, first_order, last_order,
                                           spend, first_basket)
            trend.add_order_line(row, t, occasion, amount[i], ord_short, ord_long, val_short,
                                 val_long, trend_ref, half_lives[0], half_lives[1])
        elif kind == REFUND:
            purchases.add_refund(row, amount[i], spend, refunds)
        elif CAMPAIGN_SENT <= kind <= MESSAGE_REPLIED:
            engagement.add(row, channel[i], kind - CAMPAIGN_SENT, t, channels, channel_seen,
                           eng_ref, half_lives[2])
        elif kind == SUPPORT_TICKET:
            service.add(row, t, half_lives[3], severity[i], 0.0, False, tickets, fb_sum,
                        fb_weight, svc_ref)
        elif kind == FEEDBACK:
            service.add(row, t, half_lives[3], 0.0, score[i], True, tickets, fb_sum,
                        fb_weight, svc_ref)
        if has_id[i]:
            count = recent_count[row]
            if count == recent_ids.shape[1]:
                for k in range(count - 1):
                    recent_ids[row, k] = recent_ids[row, k + 1]
                count -= 1
            recent_ids[row, count] = id_hash[i]
            recent_count[row] = count + 1
