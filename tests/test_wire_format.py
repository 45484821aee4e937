"""The stored customer state: version 2 (field codes) reads back exactly, and the blobs that
version 1 (a positional list) wrote still read, field by field."""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnwatch.core.customer import WIRE_FIELDS, WIRE_VERSION, CustomerState, Windows
from churnwatch.core.events import Event

FIXTURE = Path(__file__).parent / "data" / "customer_wire_v1.msgpack"

# Stored fields that a signal of the state holds (churnwatch.core.signals): name -> (signal,
# attribute); the others are attributes of CustomerState itself.
IN_SIGNALS = {
    "orders": ("purchases", "orders"), "first_order": ("purchases", "first_order"),
    "last_order": ("purchases", "last_order"), "spend": ("purchases", "spend"),
    "refunds": ("purchases", "refunds"), "ord_short": ("trend", "ord_short"),
    "ord_long": ("trend", "ord_long"), "val_short": ("trend", "val_short"),
    "val_long": ("trend", "val_long"), "trend_ref": ("trend", "ref"),
    "channels": ("engagement", "channels"), "eng_ref": ("engagement", "ref"),
    "tickets": ("service", "tickets"), "fb_sum": ("service", "fb_sum"),
    "fb_weight": ("service", "fb_weight"), "svc_ref": ("service", "ref"),
    "first_basket": ("purchases", "first_basket"),
}
SIGNALS = ("purchases", "trend", "engagement", "service")


def stored(state: CustomerState, name: str) -> object:
    """The value of the stored field ``name`` (a name of version 1's positions)."""
    if name in IN_SIGNALS:
        signal, attribute = IN_SIGNALS[name]
        return getattr(getattr(state, signal), attribute)
    return getattr(state, name)


def version_1_blobs() -> list[tuple[str, list[object]]]:
    """Written by the code before version 2 (commit of tests/data/customer_wire_v1.msgpack)."""
    pairs = msgpack.unpackb(FIXTURE.read_bytes(), strict_map_key=False)
    return [(cid, msgpack.unpackb(blob, strict_map_key=False)) for cid, blob in pairs]


def test_the_fixture_holds_every_length_version_1_wrote() -> None:
    assert sorted({len(raw) for _, raw in version_1_blobs()}) == [34, 35, 36]


@pytest.mark.parametrize("cid, raw", version_1_blobs(), ids=lambda v: str(v)[:12])
def test_version_1_blobs_read_field_by_field(cid: str, raw: list[object]) -> None:
    state = CustomerState.from_wire(raw)  # type: ignore[arg-type]
    # The positions of version 1, by name: what the old reader gave.
    named = dict(zip(
        ["first_seen", "last_event_ts", "segment", "declared_value_tier", "orders",
         "first_order", "last_order", "spend", "refunds", "ord_short", "ord_long", "val_short",
         "val_long", "trend_ref", "channels", "eng_ref", "tickets", "fb_sum", "fb_weight",
         "svc_ref", "visits", "last_visit", "score", "tier", "components", "scored_at",
         "next_review_at", "tier_since", "peak_score", "peak_at", "drop_counted", "high_value",
         "offsets", "recent_ids"], raw[:34], strict=True))
    for name in ("first_seen", "last_event_ts", "segment", "declared_value_tier", "orders",
                 "first_order", "last_order", "spend", "refunds", "ord_short", "ord_long",
                 "val_short", "val_long", "trend_ref", "eng_ref", "tickets", "fb_sum",
                 "fb_weight", "svc_ref", "tier", "components", "scored_at", "next_review_at",
                 "tier_since", "peak_at", "drop_counted", "high_value", "recent_ids"):
        assert stored(state, name) == (named[name] or ([] if name in ("components",
                                                                        "recent_ids")
                                                        else named[name])), name
    assert state.engagement.channels == (named["channels"] or {})
    assert state.offsets == {int(k): v for k, v in (named["offsets"] or {}).items()}
    assert state.score == (None if named["score"] is None else named["score"] / 100)
    assert state.peak_score == named["peak_score"] / 100  # type: ignore[operator]
    assert state.outreach == (raw[34] if len(raw) > 34 else None)
    assert state.model_fit == (raw[35] if len(raw) > 35 else 0)
    assert state.history == []
    # ... and is written again as version 2, which reads back to the same state.
    wire = state.to_wire()
    assert wire[0] == WIRE_VERSION and len(wire) == 2
    again = CustomerState.from_wire(msgpack.unpackb(msgpack.packb(wire), strict_map_key=False))
    assert again.to_wire() == wire
    assert len(msgpack.packb(wire)) < len(msgpack.packb(raw))


def test_a_state_from_a_newer_version_is_refused_with_its_version() -> None:
    with pytest.raises(ValueError, match="version 3"):
        CustomerState.from_wire([3, [0]])


def test_the_field_table_names_every_stored_field() -> None:
    state = CustomerState(1_700_000_000.0)
    state.apply(Event("a", "order", 1_700_000_000.0, amount=10.0), Windows.default())
    state.history = [[1_700_000_000, 0, 1, 900, 700]]
    version, fields = state.to_wire()
    assert len(WIRE_FIELDS) == len(set(WIRE_FIELDS)) == len(fields) + 1
    assert version == WIRE_VERSION and WIRE_FIELDS[-1] == "first_basket"
    assert fields[-1] == state.purchases.first_basket == 1000  # the last field, in cents


def test_visits_are_not_stored() -> None:
    state = CustomerState(1_700_000_000.0)
    before = state.to_wire()
    state.apply(Event("a", "visit", 1_700_000_100.0), Windows.default())
    assert state.last_event_ts == 1_700_000_100.0
    state.last_event_ts = 1_700_000_000.0  # the only trace a visit leaves
    assert state.to_wire() == before
    assert "visits" not in WIRE_FIELDS and not hasattr(state, "visits")


counters = st.one_of(st.floats(0, 1e9, allow_nan=False), st.integers(0, 10**6).map(float))
stamps = st.integers(1_500_000_000, 1_900_000_000).map(float)


@settings(max_examples=300, deadline=None)
@given(first=stamps, spend=counters, refunds=counters, short=counters, tickets=counters,
       rows=st.dictionaries(st.sampled_from(["email", "sms", "whatsapp", "fax"]),
                            st.lists(counters, min_size=5, max_size=5), max_size=3),
       score=st.one_of(st.none(), st.floats(0, 100)), tier=st.integers(-1, 3),
       review=st.one_of(st.none(), stamps), offsets=st.dictionaries(
           st.integers(1, 2**32 - 1), st.integers(0, 2**63 - 1), max_size=3),
       history=st.lists(st.lists(st.integers(-5, 2**31), min_size=5, max_size=9),
                        max_size=5),
       flags=st.tuples(st.booleans(), st.booleans()), fit=st.integers(0, 50),
       basket=st.one_of(st.none(), st.integers(0, 10**12)),
       outreach=st.one_of(st.none(), st.fixed_dictionaries(
           {"playbook": st.text(max_size=8), "assigned_at": st.integers(0, 2**31)},
           optional={"holdout": st.booleans(), "contacted_at": st.integers(0, 2**31),
                     "counted": st.booleans(), "log": st.lists(st.lists(st.integers(0, 2**40),
                                                                         max_size=3)),
                     "a_later_key": st.integers(-5, 5)})))
def test_version_2_reads_back_exactly(first: float, spend: float, refunds: float, short: float,
                                      tickets: float, rows: dict[str, list[float]],
                                      score: float | None, tier: int, review: float | None,
                                      offsets: dict[int, int], history: list[list[int]],
                                      flags: tuple[bool, bool], fit: int,
                                      basket: int | None,
                                      outreach: dict[str, object] | None) -> None:
    state = CustomerState(first)
    state.purchases.spend, state.purchases.refunds = spend, refunds
    state.purchases.first_basket = basket
    state.trend.ord_short, state.service.tickets = short, tickets
    state.engagement.channels = rows
    state.score = None if score is None else round(score * 100) / 100
    state.tier, state.next_review_at, state.offsets = tier, review, offsets
    state.history = [list(h) for h in history]
    state.drop_counted, state.high_value = flags
    state.model_fit = fit
    state.outreach = outreach
    blob = msgpack.packb(state.to_wire())
    back = CustomerState.from_wire(msgpack.unpackb(blob, strict_map_key=False))
    pairs = [(name, getattr(back, name), getattr(state, name))
             for name in CustomerState.__slots__ if name not in SIGNALS]
    pairs += [(f"{signal}.{name}", getattr(getattr(back, signal), name),
               getattr(getattr(state, signal), name))
              for signal in SIGNALS for name in getattr(state, signal).__slots__]
    assert len(pairs) == len(CustomerState.__slots__) - len(SIGNALS) + len(IN_SIGNALS)
    for name, got, want in pairs:
        if isinstance(want, float) and isinstance(got, float):
            assert got == want or (math.isnan(got) and math.isnan(want)), name
            assert type(got) is float, name
        else:
            assert got == want, name
    assert all(type(v) is float for row in back.engagement.channels.values() for v in row)
