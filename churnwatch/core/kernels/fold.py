"""A micro-batch folded into the customer table: the kernels of the per-event steps of
:class:`churnwatch.core.engine.ShardEngine`.

:func:`admit` gives each event its fate in arrival order (:data:`APPLIED`, :data:`LATE`,
:data:`DUPLICATE`, :data:`TOO_LATE`: dedupe and lateness), :func:`apply_events` folds admitted
events into the four signals. What the shard's priors learn from the events, and profiles and
interventions (strings and dictionaries), are left to Python (:mod:`churnwatch.core.columnar`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from churnwatch.core.kernels import engagement, purchases, service, trend

#: Event type codes, in the order of :data:`churnwatch.core.event_batch.TYPE_CODES`.
(ORDER, REFUND, CAMPAIGN_SENT, CAMPAIGN_OPENED, CAMPAIGN_CLICKED, MESSAGE_SENT, MESSAGE_REPLIED,
 SUPPORT_TICKET, FEEDBACK, VISIT, PROFILE, INTERVENTION) = range(12)
#: What became of an event.
APPLIED, LATE, DUPLICATE, TOO_LATE = range(4)


@njit(cache=True)
def admit(rows: np.ndarray, ts: np.ndarray, id_hash: np.ndarray, has_id: np.ndarray,
          replayed: np.ndarray, lateness: float, scored: np.ndarray, last_event_ts: np.ndarray,
          recent_ids: np.ndarray, recent_count: np.ndarray, status: np.ndarray) -> None:
    """Decide each event's fate in arrival order (``ShardEngine.is_duplicate`` and
    ``is_too_late``): ``replayed`` ones (the shard consumed them already) and repeated event
    ids are duplicates; an event older than its customer's latest by more than ``lateness``
    seconds is too late once the customer has been scored. ``scored`` and ``last_event_ts``
    are the batch's working copies (updated as events are admitted); the admitted events' ids
    join the customer's recent ids."""
    for i in range(rows.shape[0]):
        row = rows[i]
        t = ts[i]
        if replayed[i]:
            status[i] = DUPLICATE
            continue
        if has_id[i]:
            duplicate = False
            for k in range(recent_count[row]):
                if recent_ids[row, k] == id_hash[i]:
                    duplicate = True
            if duplicate:
                status[i] = DUPLICATE
                continue
        state = APPLIED
        if scored[row] and t < last_event_ts[row]:
            if t >= last_event_ts[row] - lateness:
                state = LATE
            else:
                status[i] = TOO_LATE
                continue
        status[i] = state
        scored[row] = True
        if t > last_event_ts[row]:
            last_event_ts[row] = t
        if has_id[i]:
            count = recent_count[row]
            if count == recent_ids.shape[1]:
                for k in range(count - 1):
                    recent_ids[row, k] = recent_ids[row, k + 1]
                count -= 1
            recent_ids[row, count] = id_hash[i]
            recent_count[row] = count + 1


@njit(cache=True)
def apply_events(which: np.ndarray, rows: np.ndarray, types: np.ndarray, ts: np.ndarray,
                 amount: np.ndarray, channel: np.ndarray, score: np.ndarray,
                 severity: np.ndarray, half_lives: np.ndarray, last_event_ts: np.ndarray,
                 first_seen: np.ndarray, orders: np.ndarray, first_order: np.ndarray,
                 last_order: np.ndarray, spend: np.ndarray, refunds: np.ndarray,
                 first_basket: np.ndarray, ord_short: np.ndarray, ord_long: np.ndarray,
                 val_short: np.ndarray, val_long: np.ndarray, trend_ref: np.ndarray,
                 channels: np.ndarray, channel_seen: np.ndarray, eng_ref: np.ndarray,
                 tickets: np.ndarray, fb_sum: np.ndarray, fb_weight: np.ndarray,
                 svc_ref: np.ndarray) -> None:
    """Fold the admitted events ``which`` (indexes into the batch's columns, in arrival order)
    into their rows' signals (``CustomerState.apply``; profiles and interventions are
    Python's). ``half_lives``: the trend's short and long, engagement's and service's, in
    seconds."""
    for j in range(which.shape[0]):
        i = which[j]
        row = rows[i]
        t = ts[i]
        if t > last_event_ts[row]:
            last_event_ts[row] = t
        if t < first_seen[row]:
            first_seen[row] = t
        kind = types[i]
        if kind == ORDER:
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
