"""Win-back, measured: assignments to a playbook's treated or hold-out group, interventions,
recoveries within the window, the rates with their intervals; the metrics (promtool-clean,
bounded labels) and the API."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from churnwatch.metrics.business import BusinessCollector
from churnwatch.state.memory import MemoryStore
from prometheus_client import CollectorRegistry, generate_latest

from churnwatch.core.aggregates import WinbackCount
from churnwatch.core.config import ChurnwatchConfig, parse_config
from churnwatch.core.customer import DAY
from churnwatch.core.engine import ShardEngine
from churnwatch.core.events import Event, decode_event
from churnwatch.core.playbooks import in_holdout
from churnwatch.core.records import Incoming, ShardState
from churnwatch.core.winback import newcombe_difference, wilson_interval, winback_report

T0 = 1_700_000_000.0
CONFIG = parse_config({
    "playbooks": {"call_them": {"action": "Call", "channel": "phone",
                                "tiers": ["watch", "at_risk", "churned"]}},
    "winback": {"holdout_share": 0.3, "window_days": 60},
    "state": {"shards": 1}, "source": {"stream_partitions": 1},
}, source="test.toml")


def run(engine: ShardEngine, store: MemoryStore, events: list[Event], now: float) -> None:
    ids = list(dict.fromkeys(e.customer_id for e in events))
    loaded = store.load_customers(0, ids)
    items = [Incoming(e, 0, 0) for e in events]
    result = engine.process(items, loaded, now)
    store.commit(0, engine.state, result.changed, result.transitions)


def test_assignment_contact_and_recovery_are_counted_per_group() -> None:
    store = MemoryStore(1)
    engine = ShardEngine(0, CONFIG, ShardState())
    ids = [f"c{n:03d}" for n in range(200)]
    # Regular buyers, every 10 days for 60 days, then silent: they slip out of healthy.
    history = [Event(cid, "order", T0 + d * DAY, amount=25.0) for d in range(0, 61, 10)
               for cid in ids]
    run(engine, store, history, now=T0 + 60 * DAY)
    run(engine, store, [], now=T0 + 60 * DAY)
    # They turn watch around day 139 (79 days silent) under the model this stream teaches,
    # at_risk around 149, churned around 161.
    silent_until = T0 + 170 * DAY
    states = dict(store.load_customers(0, ids))
    result = engine.review({c: s for c, s in states.items() if s is not None}, silent_until)
    store.commit(0, engine.state, result.changed, result.transitions)
    assigned = {cid: s.outreach for cid, s in store.load_customers(0, ids).items()
                if s is not None and s.outreach and s.outreach.get("playbook")}
    assert len(assigned) == len(ids)
    # The premise of the recovery counts below: every assignment is less than a window old.
    assert all(silent_until - 50 * DAY < o["assigned_at"] <= silent_until
               for o in assigned.values())
    for cid, outreach in assigned.items():
        assert outreach["playbook"] == "call_them"
        assert outreach["holdout"] == in_holdout(cid, "call_them", 0.3)
    treated = [c for c, o in assigned.items() if not o["holdout"]]
    held = [c for c, o in assigned.items() if o["holdout"]]
    assert treated and held
    # Half of the treated are contacted (an intervention event naming the playbook); the
    # contacted and a few of the hold-out order again within the window.
    contacted = treated[: len(treated) // 2]
    at = silent_until + DAY
    run(engine, store, [decode_event({"customer_id": c, "type": "intervention", "ts": at,
                                      "channel": "phone", "playbook": "call_them"},
                                     position="t")  # type: ignore[misc]
                        for c in contacted], now=at)
    back = contacted + held[:2]
    run(engine, store, [Event(c, "order", at + DAY, amount=25.0) for c in back], now=at + DAY)
    report = {r["playbook"]: r for r in winback_report(store.shard_states(), CONFIG)}
    call = report["call_them"]
    assert call["treated"]["assigned"] == len(treated)
    assert call["treated"]["contacted"] == len(contacted)
    assert call["treated"]["recovered"] == len(contacted)
    assert call["holdout"]["assigned"] == len(held) and call["holdout"]["recovered"] == 2
    rate = len(contacted) / len(treated)
    assert call["treated"]["recovery_rate"] == pytest.approx(rate)
    expected = newcombe_difference(len(contacted), len(treated), 2, len(held))
    assert expected is not None
    assert call["uplift"]["difference"] == pytest.approx(expected[0], abs=1e-4)
    assert call["uplift"]["interval"] == pytest.approx(list(expected[1:]), abs=1e-4)
    # Recovered customers have no open assignment; the interventions are remembered.
    for cid in contacted:
        state = store.customer(cid)
        assert state is not None and state.outreach is not None
        assert "playbook" not in state.outreach and state.outreach["log"][0][1] == "phone"
    # A customer recovering after the window is not counted.
    late = [c for c in treated if c not in contacted][:3]
    run(engine, store, [Event(c, "order", silent_until + 90 * DAY, amount=5.0) for c in late],
        now=silent_until + 90 * DAY)
    report = {r["playbook"]: r for r in winback_report(store.shard_states(), CONFIG)}
    assert report["call_them"]["treated"]["recovered"] == len(contacted)


def test_hold_out_customers_get_no_suggestion_and_no_action_on_the_stream() -> None:
    store = MemoryStore(1)
    engine = ShardEngine(0, CONFIG, ShardState())
    ids = [f"h{n:03d}" for n in range(60)]
    run(engine, store, [Event(c, "order", T0 + d * DAY, amount=25.0) for d in (0, 10, 20)
                        for c in ids], now=T0 + 20 * DAY)
    states = {c: s for c, s in store.load_customers(0, ids).items() if s is not None}
    result = engine.review(states, T0 + 200 * DAY)
    records = [t.as_dict() for t in result.transitions]
    held = [r for r in records if r.get("holdout")]
    shown = [r for r in records if r.get("holdout") is False]
    assert held and shown
    assert all("action" not in r and r["playbook"] == "call_them" for r in held)
    assert all(r["action"] == "Call" and r["channel"] == "phone" for r in shown)


def test_wilson_interval_covers_the_rate_and_narrows_with_trials() -> None:
    low, high = wilson_interval(5, 10)
    wide = high - low
    low2, high2 = wilson_interval(500, 1000)
    assert low < 0.5 < high and low2 < 0.5 < high2 and high2 - low2 < wide / 5
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert newcombe_difference(1, 0, 1, 1) is None


def test_winback_metrics_have_bounded_labels_and_pass_promtool() -> None:
    store = MemoryStore(1)
    state = ShardState()
    state.counters.update({WinbackCount("assigned", "call_them", "treated"): 10.0,
                           WinbackCount("recovered", "call_them", "treated"): 4.0,
                           WinbackCount("assigned", "call_them", "holdout"): 5.0,
                           WinbackCount("recovered", "call_them", "holdout"): 1.0,
                           WinbackCount("assigned", "gone_playbook", "treated"): 3.0})
    store.commit(0, state, {}, [])
    registry = CollectorRegistry()
    registry.register(BusinessCollector(store, CONFIG))
    assert registry.get_sample_value("churnwatch_winback_assigned_total",
                                     {"playbook": "call_them", "group": "treated"}) == 10.0
    assert registry.get_sample_value("churnwatch_winback_recovery_ratio",
                                     {"playbook": "call_them", "group": "holdout"}) == 0.2
    assert registry.get_sample_value("churnwatch_winback_uplift_ratio",
                                     {"playbook": "call_them", "bound": "estimate"}) == 0.2
    text = generate_latest(registry).decode()
    assert "gone_playbook" not in text  # only configured playbooks label metrics
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run `make system-deps`"
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                             capture_output=True, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_default_configuration_measures_the_default_playbooks() -> None:
    names = [r["playbook"] for r in winback_report([], ChurnwatchConfig())]
    assert names == [p.name for p in ChurnwatchConfig().playbooks]
