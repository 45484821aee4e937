"""The buyer model: a tempered MBG/NBD whose population parameters are learned from the stream.

Each customer buys at a rate of their own while they stay, and may leave right after any
purchase, the first included (the MBG/NBD of Batislam et al., 2007, so one-time buyers are never
rated certainly alive). Rates vary across customers as a gamma distribution ``(r, alpha)``; the
chance of leaving after a purchase varies as a beta distribution ``(a, b)``. Given a customer's
``x`` repeat purchases, the age ``t_x`` of their last purchase and their age ``T`` (days since the
first), the chance of at least one order within the next ``h`` days has a closed form.

Real customers are less regular than a Poisson clock: their rate drifts, so old purchases say
less about today than the model assumes. ``evidence_weight`` ``w`` (0 < w <= 1) tempers the
evidence: ``x``, ``t_x`` and ``T`` enter as ``w x``, ``w t_x`` and ``w T``, a wider posterior
of the same mean that trusts a frequent buyer's long silence less. The horizon is the future,
not evidence: it enters whole. ``w`` is chosen on the
stream's own matured outcomes (see :mod:`churnwatch.core.priors`), never fixed per data set.

>>> model = BuyerModel()
>>> loyal = model.p_order_within(x=9, t_x=180.0, age=190.0, horizon=90.0)
>>> once = model.p_order_within(x=0, t_x=0.0, age=10.0, horizon=90.0)
>>> gone = model.p_order_within(x=9, t_x=180.0, age=400.0, horizon=90.0)
>>> 0 < gone < once < loyal < 1
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln

#: Evidence weights tried on the matured outcomes, most trusting first.
EVIDENCE_WEIGHTS = (1.0, 0.7, 0.5, 0.35, 0.25)
#: How much better a less trusting weight must do to be chosen (see choose_evidence_weight).
LOGLIK_MARGIN = 2.0
# Bounds of the log parameters: wide enough for once-a-year buyers (a gamma scale `alpha` of
# several thousand days: e**8 = 2,981 cut their fit short and cost 0.01 AUC on them).
_LOG_BOUNDS = (-7.0, 12.0)
# A weak normal prior on the log parameters (sd 2 around the defaults): a shard with a handful
# of customers gets sensible parameters, a shard with hundreds gets its own.
_PRIOR_SD = 2.0


@dataclass(frozen=True, slots=True)
class BuyerModel:
    """Population parameters of the tempered MBG/NBD (times in days)."""

    r: float = 1.0
    alpha: float = 30.0
    a: float = 1.0
    b: float = 2.0
    evidence_weight: float = 1.0

    def p_alive(self, x: float, t_x: float, age: float) -> float:
        """P(the customer has not left), given ``x`` repeats, the last at ``t_x``, now ``age``.

        >>> m = BuyerModel()
        >>> m.p_alive(3, 60.0, 70.0) > m.p_alive(3, 60.0, 200.0)
        True
        """
        w = self.evidence_weight
        xe = w * x
        ratio = (self.alpha + w * max(age, t_x)) / (self.alpha + w * t_x)
        odds = self.a / (self.b + xe) * math.exp((self.r + xe) * math.log(ratio))
        return 1.0 / (1.0 + odds) if math.isfinite(odds) else 0.0

    def p_order_within(self, x: float, t_x: float, age: float, horizon: float) -> float:
        """P(at least one order within ``horizon`` days after ``age``).

        Alive, the rate's posterior is gamma ``(r + x, alpha + T)``, so no order within ``h``
        has probability ``((alpha + T) / (alpha + T + h)) ** (r + x)``. It falls with every day
        of silence (``age`` up, ``x`` and ``t_x`` fixed): both factors do.
        """
        w = self.evidence_weight
        age = max(age, t_x)
        base = self.alpha + w * age
        quiet = math.exp((self.r + w * x) * math.log(base / (base + horizon)))
        return self.p_alive(x, t_x, age) * (1.0 - quiet)

    def without_weight(self) -> BuyerModel:
        """The population parameters alone (evidence weight 1): where a fit may start."""
        return BuyerModel(self.r, self.alpha, self.a, self.b)

    def mean_gap_days(self) -> float:
        """The population's typical gap between orders (mean of the gamma's inverse rate)."""
        return self.alpha / (self.r - 1.0) if self.r > 1.05 else self.alpha / 0.05 * self.r

    def to_wire(self) -> list[float]:
        """A compact msgpack-able form."""
        return [self.r, self.alpha, self.a, self.b, self.evidence_weight]

    @classmethod
    def from_wire(cls, data: Sequence[float]) -> BuyerModel:
        """Inverse of :meth:`to_wire`."""
        r, alpha, a, b, w = (float(v) for v in data)
        return cls(r, alpha, a, b, w)


def p_order_within_many(model: BuyerModel, x: np.ndarray, t_x: np.ndarray, age: np.ndarray,
                        horizon: float) -> np.ndarray:
    """:meth:`BuyerModel.p_order_within` over arrays (for fitting and calibration)."""
    w = model.evidence_weight
    xe = w * x
    shape = model.r + xe
    base = model.alpha + w * age
    odds = model.a / (model.b + xe) * np.exp(shape * np.log(base / (model.alpha + w * t_x)))
    alive = 1.0 / (1.0 + odds)
    return np.asarray(alive * (1.0 - np.exp(shape * np.log(base / (base + horizon)))))


def neg_log_posterior(theta: np.ndarray, x: np.ndarray, t_x: np.ndarray, age: np.ndarray,
                       centre: np.ndarray) -> tuple[float, np.ndarray]:
    """The negative log posterior of the log parameters ``theta`` and its gradient.

    Analytic: with a numeric gradient L-BFGS-B evaluated the likelihood five times per step,
    and the refits took a third of a replay's time. ``tests/test_calibration.py`` checks it
    against finite differences.
    """
    r, alpha, a, b = np.exp(theta)
    log_aged, log_last = np.log(alpha + age), np.log(alpha + t_x)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x + 1.0) - betaln(a, b)
    a3 = -(r + x) * log_aged
    a4 = np.log(a) - np.log(b + x) + (r + x) * (log_aged - log_last)
    loglik = np.sum(a1 + a2 + a3 + np.logaddexp(a4, 0.0))
    prior = -0.5 * np.sum(((theta - centre) / _PRIOR_SD) ** 2)
    gone = expit(a4)  # d logaddexp(a4, 0) / d a4
    d_r = np.sum(digamma(r + x) - digamma(r) + np.log(alpha) - log_aged
                 + gone * (log_aged - log_last))
    d_alpha = np.sum(r / alpha - (r + x) / (alpha + age)
                     + gone * (r + x) * (1.0 / (alpha + age) - 1.0 / (alpha + t_x)))
    d_a = np.sum(digamma(a + b) - digamma(a + b + x + 1.0) + gone / a)
    d_b = np.sum(digamma(b + x + 1.0) - digamma(a + b + x + 1.0) - digamma(b) + digamma(a + b)
                 - gone / (b + x))
    grad = np.array([r * d_r, alpha * d_alpha, a * d_a, b * d_b])
    grad_prior = -(theta - centre) / _PRIOR_SD ** 2
    return float(-(loglik + prior)), -(grad + grad_prior)


def fit_buyer_model(x: np.ndarray, t_x: np.ndarray, age: np.ndarray, start: BuyerModel,
                    prior: BuyerModel) -> BuyerModel:
    """The MAP parameters for customers' ``(x, t_x, age)`` summaries, from ``start``.

    Deterministic: the same summaries and start give the same parameters.

    >>> x = np.array([0, 0, 1, 3, 6, 0, 2]); t = np.array([0, 0, 30, 80, 150, 0, 40])
    >>> age = np.array([200, 20, 90, 100, 160, 300, 200])
    >>> fitted = fit_buyer_model(x, t, age, BuyerModel(), BuyerModel())
    >>> fitted.r > 0 and fitted.alpha > 0
    True
    """
    centre = np.log([prior.r, prior.alpha, prior.a, prior.b])
    best = None
    # From the last fit (a warm start), from the prior, and from the prior with a widely
    # spread chance of leaving (a and b a tenth): the posterior has local optima (one shard of
    # weekly shoppers kept r 1.7 where its neighbours fitted 12 to 20; on a young log of frequent
    # shoppers one shard sat at a 1 % chance of leaving after a purchase where the better optimum
    # says 17 %); the best posterior of the three wins.
    spread = BuyerModel(prior.r, prior.alpha, prior.a / 10.0, prior.b / 10.0)
    for origin in dict.fromkeys((start.without_weight(), prior.without_weight(), spread)):
        first = np.clip(np.log([origin.r, origin.alpha, origin.a, origin.b]), *_LOG_BOUNDS)
        result = minimize(neg_log_posterior, first, args=(x, t_x, age, centre),
                          method="L-BFGS-B", jac=True, bounds=[_LOG_BOUNDS] * 4,
                          options={"maxiter": 200})
        if best is None or result.fun < best.fun:
            best = result
    assert best is not None
    result = best
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BuyerModel(r, alpha, a, b, start.evidence_weight)


def log_likelihood(predicted: np.ndarray, returned: np.ndarray) -> float:
    """The log-likelihood of the outcomes ``returned`` (1 or 0) under the chances ``predicted``
    (clipped away from 0 and 1), what the matured outcomes choose the evidence weight and the
    value coefficient by.

    >>> round(log_likelihood(np.array([0.5, 0.5]), np.array([1.0, 0.0])), 4)
    -1.3863
    """
    p = np.clip(predicted, 1e-6, 1.0 - 1e-6)
    return float(np.sum(returned * np.log(p) + (1.0 - returned) * np.log1p(-p)))


def choose_evidence_weight(model: BuyerModel, x: np.ndarray, t_x: np.ndarray, age: np.ndarray,
                           horizon: float, returned: np.ndarray, current: float = 1.0) -> float:
    """The evidence weight whose predictions of ``returned`` (within ``horizon`` after ``age``)
    have the highest log-likelihood, if it beats the weight in force, ``current``, by
    ``LOGLIK_MARGIN`` (total log-likelihood, as an information criterion would ask of one more
    parameter); else ``current`` stays. Without the margin a shard's refits flipped between
    neighbouring weights on noise, and each flip moved some customers' chance by 30 points or
    more: tier changes that were the model's, not the customer's.

    >>> model = BuyerModel(r=2.0, alpha=20.0, a=1.0, b=4.0)
    >>> x, t, age = np.array([3.0, 0.0, 5.0]), np.array([40.0, 0.0, 80.0]), np.array([60.0] * 3)
    >>> returned = np.array([1.0, 0.0, 1.0])
    >>> choose_evidence_weight(model, x, t, age, 30.0, returned, current=0.7)  # three outcomes
    0.7
    """
    scores = {}
    for weight in dict.fromkeys((current, *EVIDENCE_WEIGHTS)):
        tempered = BuyerModel(model.r, model.alpha, model.a, model.b, weight)
        scores[weight] = log_likelihood(p_order_within_many(tempered, x, t_x, age, horizon),
                                        returned)
    best = max(EVIDENCE_WEIGHTS, key=lambda w: scores[w])  # ties: the more trusting weight
    return best if scores[best] > scores[current] + LOGLIK_MARGIN else current


#: Log-odds shifts per standard deviation of log basket value tried on the matured outcomes.
VALUE_COEFFICIENTS = (-0.3, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
#: How much better than no value effect at all a coefficient must predict the matured outcomes
#: to be used: the likelihood-ratio test of one more parameter at the 1 % level
#: (chi-squared 6.63 with one degree of freedom, halved).
VALUE_MARGIN = 3.32
#: How much better than none a coefficient in force must still predict them to stay: the same
#: test at the 10 % level (2.71, halved).
VALUE_KEEP = 1.35


@dataclass(frozen=True, slots=True)
class ValueEvidence:
    """What a customer's first basket says of their return, learned per shard.

    A customer whose first order day was worth more (or less) than the shard's usual may be
    more (or less) likely to come back than their purchase history alone says. The shift is
    ``coefficient`` per standard deviation of ``log(1 + first basket)`` from the sampled
    buyers' ``mean`` (``spread`` the deviation), on the log-odds of the model's chance; the
    coefficient is 0 unless the stream's matured outcomes show the effect
    (:func:`choose_value_coefficient`). The first basket does not change with later orders, so
    neither does the shift: an order still only raises the chance, silence only lowers it.

    >>> v = ValueEvidence(mean=math.log1p(40.0), spread=0.8, coefficient=0.2)
    >>> round(v.shift(40.0), 3), v.shift(400.0) > 0 > v.shift(4.0), ValueEvidence().shift(400.0)
    (0.0, True, 0.0)
    """

    mean: float = 0.0
    spread: float = 1.0
    coefficient: float = 0.0

    def shift(self, basket: float | None) -> float:
        """The log-odds shift for a first basket worth ``basket`` (``None``: unknown, no
        shift)."""
        if self.coefficient == 0.0 or basket is None:
            return 0.0
        return self.coefficient * (math.log1p(max(basket, 0.0)) - self.mean) / self.spread

    def standardised(self, baskets: np.ndarray) -> np.ndarray:
        """Deviations of ``log(1 + basket)`` from the mean, in spreads (NaN stays NaN: unknown)."""
        return np.asarray((np.log1p(baskets) - self.mean) / self.spread)

    def shifts(self, baskets: np.ndarray) -> np.ndarray:
        """:meth:`shift` over arrays of baskets (0 where a basket is unknown, NaN)."""
        if self.coefficient == 0.0:
            return np.zeros(len(baskets))
        return np.nan_to_num(self.coefficient * self.standardised(baskets), nan=0.0)

    def to_wire(self) -> list[float]:
        """A compact msgpack-able form."""
        return [self.mean, self.spread, self.coefficient]

    @classmethod
    def from_wire(cls, data: Sequence[float] | None) -> ValueEvidence:
        """Inverse of :meth:`to_wire` (``None``: no value effect)."""
        if not data:
            return cls()
        mean, spread, coefficient = (float(v) for v in data)
        return cls(mean, spread, coefficient)


def shifted(p: float, shift: float) -> float:
    """The probability ``p`` moved by ``shift`` on the log-odds (monotone in ``p``).

    >>> shifted(0.5, 0.0), round(shifted(0.5, math.log(3.0)), 3), shifted(0.0, 1.0)
    (0.5, 0.75, 0.0)
    """
    if shift == 0.0 or p <= 0.0 or p >= 1.0:
        return p
    return 1.0 / (1.0 + (1.0 - p) / p * math.exp(-shift))


def shifted_many(p: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """:func:`shifted` over arrays."""
    with np.errstate(divide="ignore"):
        odds = np.where((p > 0.0) & (p < 1.0), (1.0 - p) / np.where(p > 0.0, p, 1.0), 0.0)
    moved = 1.0 / (1.0 + odds * np.exp(-shift))
    return np.asarray(np.where((p > 0.0) & (p < 1.0), moved, p))


def choose_value_coefficient(predicted: np.ndarray, standardised: np.ndarray,
                             returned: np.ndarray, current: float = 0.0) -> float:
    """The value coefficient for a shard: the one whose shifted ``predicted`` chances (each
    customer's basket ``standardised``: deviations from the mean in standard deviations) give
    the matured outcomes ``returned`` the highest log-likelihood. From none (``current`` 0) it
    must beat no effect at all by ``VALUE_MARGIN`` (significant at 1 %). A coefficient in force
    stays while it still beats none by ``VALUE_KEEP`` (at 10 %) and no other beats it by
    ``LOGLIK_MARGIN``: as a shard's history grows, its customers' repeat orders tell more of
    them than their first basket and the effect's margin shrinks; with one threshold the
    coefficient flipped to 0 and back from one refit to the next, moving chances that nothing
    the customers did had moved. A coefficient taken on a chance result (a shard refits dozens
    of times, so one in a hundred will pass) falls back to none when the next windows do not
    bear it out.

    >>> rng = np.random.default_rng(1)
    >>> z = rng.normal(size=4000); p = np.full(4000, 0.5)
    >>> big_spenders_return = (rng.random(4000) < 1 / (1 + np.exp(-0.3 * z))).astype(float)
    >>> choose_value_coefficient(p, z, big_spenders_return)
    0.3
    >>> coin = np.random.default_rng(2).random(4000) < 0.5  # baskets say nothing
    >>> choose_value_coefficient(p, z, coin.astype(float))
    0.0
    """
    base = np.clip(predicted, 1e-6, 1.0 - 1e-6)
    scores = {c: log_likelihood(shifted_many(base, c * standardised), returned)
              for c in dict.fromkeys((current, *VALUE_COEFFICIENTS))}
    best = max(VALUE_COEFFICIENTS, key=lambda c: (scores[c], -abs(c)))
    if current == 0.0:
        return best if scores[best] >= scores[0.0] + VALUE_MARGIN else 0.0
    if scores[best] > scores[current] + LOGLIK_MARGIN:
        current = best
    return current if scores[current] >= scores[0.0] + VALUE_KEEP else 0.0


@dataclass(frozen=True, slots=True)
class CalibrationMap:
    """A monotone map from the model's probability to the observed return rate.

    Knots ``(predicted, observed)`` of the curve :func:`fit_calibration` fits to matured
    outcomes, interpolated linearly and pinned at (0, 0) and (1, 1). Increasing, so a model
    probability that falls with silence stays falling once calibrated.

    >>> m = CalibrationMap((0.2, 0.5, 0.8), (0.3, 0.6, 0.85))
    >>> m.apply(0.2), round(m.apply(0.35), 3), m.apply(0.0), m.apply(1.0)
    (0.3, 0.45, 0.0, 1.0)
    """

    predicted: tuple[float, ...]
    observed: tuple[float, ...]

    def apply(self, p: float) -> float:
        """The calibrated probability for a model probability ``p``."""
        xs, ys = self.predicted, self.observed
        if not xs:
            return p
        if p <= xs[0]:
            return ys[0] * p / xs[0] if xs[0] > 0 else ys[0]
        if p >= xs[-1]:
            span = 1.0 - xs[-1]
            # Clamped: the interpolation towards 1 may round a hair above it.
            return min(1.0, ys[-1] + (1.0 - ys[-1]) * (p - xs[-1]) / span) if span > 0 \
                else ys[-1]
        lo, hi = 0, len(xs) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if xs[mid] <= p:
                lo = mid
            else:
                hi = mid
        if xs[hi] == xs[lo]:
            return ys[hi]
        return ys[lo] + (ys[hi] - ys[lo]) * (p - xs[lo]) / (xs[hi] - xs[lo])

    def to_wire(self) -> list[list[float]]:
        """A compact msgpack-able form."""
        return [list(self.predicted), list(self.observed)]

    @classmethod
    def from_wire(cls, data: Sequence[Sequence[float]]) -> CalibrationMap:
        """Inverse of :meth:`to_wire`."""
        return cls(tuple(float(v) for v in data[0]), tuple(float(v) for v in data[1]))


#: How far the calibration's parameters may stray from the identity (a normal prior of this
#: standard deviation on each): a window of a hundred outcomes moves them little.
CALIBRATION_PRIOR_SD = 2.0
#: Knots of a calibration map, evenly spaced on the log-odds over the predictions' range.
CALIBRATION_KNOTS = 33
#: The smallest weight of ``log p`` and of ``log(1 - p)``: the map stays strictly increasing.
_MIN_SLOPE = 0.02


def fit_calibration(predicted: np.ndarray, returned: np.ndarray) -> CalibrationMap:
    """A beta calibration map (Kull, Silva Filho and Flach, 2017),
    ``logit(observed) = c + a log(p) - b log(1 - p)``, fitted by maximum a posteriori on
    matured outcomes (a weak prior towards the identity ``a = b = 1, c = 0``), kept as knots
    over the predictions' range.

    Three parameters, not a step per bin: strictly increasing (``a, b > 0``), so it never ties
    customers whom the model tells apart, and smooth enough that the next refit's window of
    outcomes moves it a little rather than redrawing it, yet it follows a model that promises
    too much at one end only.

    >>> rng = np.random.default_rng(1)
    >>> p = rng.uniform(0.05, 0.95, 4000)
    >>> y = (rng.uniform(size=4000) < p * 0.6).astype(float)  # the model promises too much
    >>> m = fit_calibration(p, y)
    >>> all(a < b for a, b in zip(m.observed, m.observed[1:]))
    True
    >>> [round(m.apply(q), 2) for q in (0.1, 0.5, 0.9)]  # truth: 0.06, 0.3, 0.54
    [0.06, 0.28, 0.52]
    """
    clipped = np.clip(predicted, 1e-6, 1.0 - 1e-6)
    up, down = np.log(clipped), -np.log1p(-clipped)
    y = np.asarray(returned, float)
    variance = CALIBRATION_PRIOR_SD ** 2
    centre = np.array([1.0, 1.0, 0.0])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, c = theta
        u = c + a * up + b * down
        residual = expit(u) - y
        value = float(np.sum(np.logaddexp(0.0, u) - y * u)) + float(
            np.sum((theta - centre) ** 2)) / (2.0 * variance)
        gradient = np.array([float(residual @ up), float(residual @ down),
                             float(residual.sum())]) + (theta - centre) / variance
        return value, gradient

    a, b, c = minimize(objective, centre, jac=True, method="L-BFGS-B",
                       bounds=[(_MIN_SLOPE, 20.0), (_MIN_SLOPE, 20.0), (-20.0, 20.0)]).x
    if len(clipped) == 0:
        return CalibrationMap((), ())
    z = np.log(clipped / (1.0 - clipped))
    knots = np.unique(np.round(expit(np.linspace(float(z.min()), float(z.max()),
                                                 CALIBRATION_KNOTS)), 6))
    observed = expit(c + a * np.log(knots) - b * np.log1p(-knots))
    # Rounded once, here: a map must read back from the store exactly as it was used.
    return CalibrationMap(tuple(float(v) for v in knots),
                          tuple(round(float(v), 6) for v in observed))
