"""The stored customer state is byte for byte what it was before the state was split into signal
classes (``churnwatch.core.signals``): the same stream of events, folded through
:meth:`CustomerState.apply`, packs to the same msgpack bytes.

``tests/data/customer_wire_v2.msgpack`` was recorded on main at commit 9865285 (the flat
``CustomerState``, before ``churnwatch/core/signals.py`` existed) by running this module as a
script: ``python tests/test_customer_wire_bytes.py tests/data/customer_wire_v2.msgpack``. It holds
``[[customer_id, msgpack.packb(state.to_wire())], ...]`` for the customers of :func:`streams`:
every event type, order lines at the instant of the first and of the last order, refunds above
the spend, late events of every windowed kind (older than the reference time of their window),
channels of every code and one without a code, fractional timestamps, and a customer whose
engine-owned fields are all set.

Fields appended to the table since (``first_basket``, code 36) are left out of that comparison
and checked against a recomputation from the events instead.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import msgpack

from churnwatch.core import events as ev
from churnwatch.core.customer import CustomerState, Windows
from churnwatch.core.events import Event

FIXTURE = Path(__file__).parent / "data" / "customer_wire_v2.msgpack"
T0 = 1_700_000_000.0
DAY = 86400.0

KINDS = (ev.ORDER, ev.REFUND, ev.CAMPAIGN_SENT, ev.CAMPAIGN_OPENED, ev.CAMPAIGN_CLICKED,
         ev.MESSAGE_SENT, ev.MESSAGE_REPLIED, ev.SUPPORT_TICKET, ev.FEEDBACK, ev.VISIT,
         ev.PROFILE, ev.INTERVENTION)
CHANNELS = ("email", "whatsapp", "sms", "push", "chat", "carrier_pigeon")


def _event(rng: random.Random, cid: str, kind: str, ts: float) -> Event:
    if kind in (ev.ORDER, ev.REFUND):
        return Event(cid, kind, ts, amount=round(rng.uniform(0.5, 300.0), 2))
    if kind == ev.SUPPORT_TICKET:
        return Event(cid, kind, ts, severity=rng.choice([0.5, 1.0, 2.0, 3.0]))
    if kind == ev.FEEDBACK:
        return Event(cid, kind, ts, score=float(rng.randint(0, 10)),
                     attributes={"kind": "nps"})
    if kind == ev.PROFILE:
        return Event(cid, kind, ts, attributes={
            "segment": rng.choice(["skincare", "fashion", ""]),
            "value_tier": rng.choice(["gold", "silver", ""])})
    if kind == ev.INTERVENTION:
        return Event(cid, kind, ts, channel="phone",
                     attributes={"playbook": rng.choice(["call_them", "email_them"])})
    if kind == ev.VISIT:
        return Event(cid, kind, ts)
    return Event(cid, kind, ts, channel=rng.choice(CHANNELS))


def streams() -> list[tuple[str, list[Event]]]:
    """Fixed streams of events per customer (seeded; the same on every run)."""
    rng = random.Random(20261201)
    out: list[tuple[str, list[Event]]] = []
    for n in range(24):
        cid = f"c{n}"
        events: list[Event] = []
        newest = T0
        for _ in range(rng.randint(1, 60)):
            kind = rng.choice(KINDS)
            if rng.random() < 0.25:  # late: before the newest event so far
                ts = newest - rng.uniform(0.0, 200.0) * DAY
            else:
                ts = newest + rng.choice([0.0, rng.uniform(0.0, 40.0) * DAY,
                                          float(rng.randint(0, 90)) * DAY])
            newest = max(newest, ts)
            events.append(_event(rng, cid, kind, ts))
        out.append((cid, events))
    # Basket lines at the first and at the last order's instant, a refund above the spend.
    basket = [Event("basket", ev.ORDER, T0, amount=10.0),
              Event("basket", ev.ORDER, T0 + 30 * DAY, amount=5.0),
              Event("basket", ev.ORDER, T0, amount=2.5),
              Event("basket", ev.ORDER, T0 + 30 * DAY, amount=1.25),
              Event("basket", ev.ORDER, T0 + 10 * DAY, amount=4.0),
              Event("basket", ev.REFUND, T0 + 31 * DAY, amount=100.0),
              Event("basket", ev.ORDER, T0 + 40.5 * DAY, amount=3.0)]
    out.append(("basket", basket))
    return out


def folded() -> list[tuple[str, CustomerState]]:
    """Each stream folded through :meth:`CustomerState.apply`; the last customer also has
    every engine-owned field set."""
    windows = Windows.default()
    states: list[tuple[str, CustomerState]] = []
    for cid, events in streams():
        state = CustomerState(first_seen=events[0].ts)
        if cid == "c3":  # an open assignment, so an intervention marks it contacted
            state.outreach = {"playbook": "call_them", "assigned_at": int(T0)}
        for event in events:
            state.apply(event, windows)
        states.append((cid, state))
    state = states[-1][1]
    state.score, state.tier, state.components = 42.37, 2, [10, 20, 30, 40]
    state.scored_at, state.next_review_at, state.tier_since = T0 + 41 * DAY, T0 + 50.5 * DAY, T0
    state.peak_score, state.peak_at = 88.12, T0 + 5 * DAY
    state.drop_counted, state.high_value, state.model_fit = True, True, 3
    state.offsets, state.recent_ids = {0: 17, 3: 2**40}, [11, 12, 13]
    state.history = [[int(T0 + 41 * DAY), 1, 2, 5000, 4237]]
    return states


def packed() -> bytes:
    """The recorded form: ``[[customer_id, packb(to_wire())], ...]`` packed, without the fields
    appended since the recording."""
    states = folded()
    for _, state in states:
        state.purchases.first_basket = None
    return msgpack.packb([[cid, msgpack.packb(state.to_wire())] for cid, state in states])


def test_the_first_basket_is_what_the_first_order_day_came_to() -> None:
    for (cid, events), (_, state) in zip(streams(), folded(), strict=True):
        orders = [e for e in events if e.type == ev.ORDER]
        if not orders:
            assert state.purchases.first_basket is None
            continue
        first_day = min(int(e.ts // DAY) for e in orders)
        want = sum(round(e.amount * 100) for e in orders if int(e.ts // DAY) == first_day)
        assert state.purchases.first_basket == want, cid
        fields = state.to_wire()[1]
        assert len(fields) == 36 and fields[35] == want  # code 36, the last


def test_the_stream_covers_every_event_type_and_late_events() -> None:
    seen = {e.type for _, events in streams() for e in events}
    assert seen == set(KINDS)
    late = {e.type for _, events in streams()
            for i, e in enumerate(events) if any(e.ts < p.ts for p in events[:i])}
    assert {ev.ORDER, ev.CAMPAIGN_SENT, ev.MESSAGE_REPLIED, ev.SUPPORT_TICKET,
            ev.FEEDBACK} <= late


def test_the_stored_state_is_byte_identical_to_the_flat_state_of_before() -> None:
    recorded = msgpack.unpackb(FIXTURE.read_bytes())
    now = msgpack.unpackb(packed())
    assert [cid for cid, _ in now] == [cid for cid, _ in recorded]
    for (cid, blob), (_, want) in zip(now, recorded, strict=True):
        assert blob == want, (cid, msgpack.unpackb(blob, strict_map_key=False),
                              msgpack.unpackb(want, strict_map_key=False))
    assert packed() == FIXTURE.read_bytes()


def test_the_recorded_states_read_back_and_write_the_same_bytes() -> None:
    for _, blob in msgpack.unpackb(FIXTURE.read_bytes()):
        state = CustomerState.from_wire(msgpack.unpackb(blob, strict_map_key=False))
        assert msgpack.packb(state.to_wire()) == blob


if __name__ == "__main__":
    Path(sys.argv[1]).write_bytes(packed())
