"""The zoo of regimes: the simulator's truth, the public log's conversion, one regime end to end
(the real CDNOW download is for `make zoo`, never for the tests)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from bench import zoo
from churnwatch.simulator import DAY, REGIMES


@pytest.mark.parametrize("key", sorted(REGIMES))
def test_customers_the_simulator_says_have_left_never_order_again(key: str) -> None:
    regime = REGIMES[key]
    sim = regime.simulator(customers=300, seed=2, start=0.0)
    cutoff = regime.history_days * DAY
    later = {e["customer_id"] for e in sim.events()
             if e["type"] == "order" and float(e["ts"]) > cutoff}  # type: ignore[arg-type]
    joined = [c for c in sim.customers if c.joined <= cutoff]
    gone = {c.customer_id for c in joined if sim.has_left(c, cutoff)}
    assert gone and not gone & later
    staying = [c.customer_id for c in joined if c.customer_id not in gone]
    assert sum(c in later for c in staying) > 0.5 * len(staying)


@pytest.mark.parametrize("key", ["monthly", "mixed", "yearly"])
def test_a_customer_still_there_at_the_cut_off_leaves_at_the_rate_of_earlier_quarters(
        key: str) -> None:
    # What a forecaster learns from the past must hold after the cut-off: among the customers
    # who will change (stop, drift, pause) and have not yet, the share changing within the next
    # horizon is the same early in the history and at the cut-off (an exponential lifetime: a
    # constant hazard). The first simulator drew the change within the time left to the end of
    # the data, so at the cut-off the share rose to about 1.
    regime = REGIMES[key]
    sim = regime.simulator(customers=4000, seed=3, start=0.0)
    horizon = regime.horizon_days * DAY

    def share_changing(at: float) -> float:
        pending = [c for c in sim.customers if c.joined <= at < c.change_at]
        return sum(c.change_at <= at + horizon for c in pending) / len(pending)

    early, at_cut_off = share_changing(regime.history_days * DAY / 3), share_changing(
        regime.history_days * DAY)
    assert at_cut_off < 0.7
    assert abs(at_cut_off - early) < 0.06, (early, at_cut_off)


def test_cdnow_lines_become_order_events_at_midnight_utc(tmp_path: Path) -> None:
    wheel = tmp_path / "Lifetimes-0.11.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as out:
        out.writestr("lifetimes/datasets/CDNOW_master.txt",
                     " customer_id  date number_of_cds  dollar_value\n"
                     " 00001 19970101  1   11.77\n 00002 19970112  2   12.00\n")
    entry = zoo.cdnow(tmp_path)
    events = [json.loads(line) for line in entry.path.read_text().splitlines()]
    assert events == [
        {"customer_id": "00001", "type": "order", "ts": 852076800.0, "amount": 11.77},
        {"customer_id": "00002", "type": "order", "ts": 853027200.0, "amount": 12.0}]
    assert entry.horizon_days == 273 and entry.cutoff == 875663999.0  # 1997-09-30T23:59:59Z


def test_a_simulated_regime_is_judged_on_ranking_calibration_truth_and_tiers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert zoo.main(["--only", "weekly", "--customers", "300", "--out", str(tmp_path),
                     "--cache", str(tmp_path / "cache")]) == 0
    table = (tmp_path / "zoo.md").read_text()
    assert table.strip() in capsys.readouterr().out
    for row in ("| churnwatch: 100 - health_score |", "| Pareto/NBD: fewer expected orders |",
                "| order count (fewer = riskier) |", "| Brier skill: churnwatch |",
                "| calibration error (ECE, 10 bins): MBG/NBD |",
                "**ROC AUC against who has really left (simulator truth)**"):
        assert row in table
    data = json.loads((tmp_path / "zoo.json").read_text())["weekly"]
    # Ranking with the default configuration (the horizon learned from the weekly shoppers'
    # reorders: weeks, not the 180 days a fresh shop starts with), calibration with
    # horizon_days = 60.
    default = data["default_configuration"]
    assert default["horizons_learned"] and 7 <= default["return_probability_horizon_days"] <= 42
    assert default["customers_outside_their_tier"] == 0
    assert "learned horizon (days), default configuration" in table
    assert data["horizon_days_set"]["return_probability_horizon_days"] == 60
    assert not data["horizon_days_set"]["horizons_learned"]
    truth = data["default_configuration"]["ranking_against_truth"]
    assert truth["churnwatch: 100 - health_score"]["roc_auc"] > 0.7
