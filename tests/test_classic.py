"""The classic buy-till-you-die models: published fits on CDNOW, and predictions that come true
on data drawn from the models themselves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from churnwatch.judge.classic import (
    BGNBD,
    MBGNBD,
    ParetoNBD,
    Summaries,
    benchmark,
    fit,
    summaries_from_orders,
)
from churnwatch.judge.measures import calibration_error

# Bruce Hardie's 1/10th systematic sample of CDNOW (2,357 customers, 39 weeks of calibration),
# as shipped in the lifetimes wheel (lifetimes/datasets/cdnow_customers_summary.csv); weeks.
CDNOW = Path(__file__).parent / "data" / "cdnow_customers_summary.csv"


@pytest.fixture(scope="module")
def cdnow() -> Summaries:
    with open(CDNOW) as f:
        rows = list(csv.DictReader(f))
    return Summaries.of([float(r["frequency"]) for r in rows],
                        [float(r["recency"]) for r in rows], [float(r["T"]) for r in rows])


# Published maximum-likelihood estimates on that sample:
# BG/NBD: Fader, Hardie and Lee (2005), "Counting your customers the easy way", LL -9582.4;
# Pareto/NBD: Fader, Hardie and Lee (2005) / Fader and Hardie note 008, LL -9595.0;
# MBG/NBD: BTYDplus (Platzer), as checked by lifetimes' own test suite.
@pytest.mark.parametrize("kind, expected, log_likelihood", [
    ("bg_nbd", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}, -9582.4),
    ("pareto_nbd", {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}, -9595.0),
    ("mbg_nbd", {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614}, None),
])
def test_fit_on_cdnow_finds_the_published_parameters(cdnow: Summaries, kind: str,
                                                     expected: dict[str, float],
                                                     log_likelihood: float | None) -> None:
    result = fit(kind, cdnow)
    assert result.converged
    for name, value in expected.items():
        assert getattr(result.model, name) == pytest.approx(value, abs=2e-3), name
    if log_likelihood is not None:
        assert result.log_likelihood == pytest.approx(log_likelihood, abs=0.1)


def test_bg_nbd_conditional_expectation_matches_the_papers_spreadsheet() -> None:
    # Fader, Hardie and Lee (2005), section 5: x = 2, t_x = 30.43, T = 38.86 -> 1.226 in 39 weeks.
    model = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
    assert float(model.expected_purchases(39.0, [2], [30.43], [38.86])[0]) == pytest.approx(
        1.226, abs=1e-3)


def test_one_time_buyers_are_certainly_alive_in_bg_nbd_but_not_in_mbg_nbd() -> None:
    assert float(BGNBD(0.243, 4.414, 0.793, 2.426).p_alive(0, 0, 38)) == 1.0
    assert float(MBGNBD(0.525, 6.183, 0.891, 1.614).p_alive(0, 0, 38)) < 0.6


def test_longer_silence_lowers_every_models_chance_of_a_purchase() -> None:
    models = [BGNBD(0.243, 4.414, 0.793, 2.426), MBGNBD(0.525, 6.183, 0.891, 1.614),
              ParetoNBD(0.553, 10.578, 0.606, 11.669)]
    t_x = np.array([35.0, 25.0, 10.0, 2.0])
    for model in models:
        p = model.p_purchase(39.0, np.full(4, 4.0), t_x, np.full(4, 38.0))
        assert np.all(np.diff(p) < 0), type(model).__name__
        assert np.all((p > 0) & (p < 1))


def _simulate(kind: str, params: tuple[float, float, float, float], n: int, T_cal: float,
              t_star: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Customers drawn from the model: calibration summaries and purchases in the holdout."""
    r, alpha, third, fourth = params
    x = np.zeros(n)
    t_x = np.zeros(n)
    later = np.zeros(n)
    T = rng.uniform(0.5 * T_cal, T_cal, n)
    rate = rng.gamma(r, 1.0 / alpha, n)
    if kind == "pareto_nbd":
        death = rng.exponential(1.0 / rng.gamma(third, 1.0 / fourth, n))
    else:
        dropout = rng.beta(third, fourth, n)
    for i in range(n):
        t = 0.0
        end = T[i] + t_star
        if kind == "pareto_nbd":
            life = death[i]
        else:
            life = np.inf
            if kind == "mbg_nbd" and rng.random() < dropout[i]:
                life = 0.0
        while True:
            t += rng.exponential(1.0 / rate[i])
            if t > min(life, end):
                break
            if t <= T[i]:
                x[i] += 1
                t_x[i] = t
            else:
                later[i] += 1
            if kind != "pareto_nbd" and rng.random() < dropout[i]:
                life = t
    return x, t_x, T, later


@pytest.mark.parametrize("kind, params", [
    ("pareto_nbd", (0.553, 10.578, 0.606, 11.669)),
    ("bg_nbd", (0.243, 4.414, 0.793, 2.426)),
    ("mbg_nbd", (0.525, 6.183, 0.891, 1.614)),
])
def test_predictions_with_the_true_parameters_come_true_on_simulated_customers(
        kind: str, params: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(20260101)
    x, t_x, T, later = _simulate(kind, params, 20_000, 39.0, 39.0, rng)
    model = {"pareto_nbd": ParetoNBD, "bg_nbd": BGNBD, "mbg_nbd": MBGNBD}[kind](*params)
    p = model.p_purchase(39.0, x, t_x, T)
    returned = later > 0
    assert p.mean() == pytest.approx(returned.mean(), abs=0.01)
    assert calibration_error(p.tolist(), returned.tolist()) < 0.02
    expected = model.expected_purchases(39.0, x, t_x, T)
    assert expected.mean() == pytest.approx(later.mean(), rel=0.06)
    # Customers with the same history have the same prediction, whatever the model thinks of
    # their neighbours: the higher half of predictions returns more often.
    high = p > np.median(p)
    assert returned[high].mean() > returned[~high].mean() + 0.2


def test_fit_recovers_the_parameters_of_simulated_customers() -> None:
    rng = np.random.default_rng(7)
    truth = (0.8, 5.0, 0.7, 2.5)
    x, t_x, T, _ = _simulate("mbg_nbd", truth, 20_000, 52.0, 1.0, rng)
    result = fit("mbg_nbd", Summaries.of(x, t_x, T))
    got = (result.model.r, result.model.alpha, result.model.a, result.model.b)  # type: ignore[attr-defined]
    for found, true in zip(got, truth, strict=True):
        assert found == pytest.approx(true, rel=0.2)


def test_fitted_parameters_do_not_depend_on_the_time_unit(cdnow: Summaries) -> None:
    in_days = Summaries(cdnow.x, cdnow.t_x * 7, cdnow.T * 7, cdnow.weight)
    weeks, days = fit("pareto_nbd", cdnow).model, fit("pareto_nbd", in_days).model
    assert days.alpha == pytest.approx(7 * weeks.alpha, rel=1e-3)  # type: ignore[attr-defined]
    assert days.r == pytest.approx(weeks.r, rel=1e-3)  # type: ignore[attr-defined]


def test_summaries_count_purchase_occasions_by_day_and_reject_impossible_rows() -> None:
    day = 86400.0
    ids, s, x, t_x, T = summaries_from_orders(
        {"b": [5 * day, 5 * day + 60, 9 * day], "a": [0.0]}, cutoff=20 * day, unit=day)
    assert ids == ["a", "b"] and x.tolist() == [0, 1] and t_x.tolist() == [0, 4]
    assert T.tolist() == [20, 15] and s.weight.sum() == 2
    with pytest.raises(ValueError, match="t_x <= T"):
        Summaries.of([1], [5], [3])
    with pytest.raises(ValueError, match="t_x = 0"):
        Summaries.of([0], [2], [3])
    with pytest.raises(ValueError, match="unknown model"):
        fit("lifetimes", s)


def test_benchmark_predicts_every_customer_in_id_order_within_zero_and_one() -> None:
    day = 86400.0
    rng = np.random.default_rng(3)
    orders = {}
    for i in range(300):
        first = rng.uniform(0, 200) * day
        count = int(rng.integers(1, 6))
        later = first + rng.uniform(0, 250 * day - first, count - 1)
        orders[f"c{i:03d}"] = sorted([first, *later.tolist()])
    results = benchmark(orders, 250 * day, 90.0)
    for result in results:
        assert result.customer_ids == sorted(orders)
        assert np.all((result.p_purchase >= 0) & (result.p_purchase <= 1))
        assert np.all(result.expected_purchases >= 0)
        assert result.detail()["converged"] is True
