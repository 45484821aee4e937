"""Classic buy-till-you-die models, the yardstick the backtest holds churnwatch against.

Three latent-attrition models fitted by maximum likelihood on each customer's calibration
summary ``(x, t_x, T)``: ``x`` repeat purchases (purchase occasions after the first), ``t_x`` the
time from the first to the last purchase, ``T`` the time from the first purchase to the cut-off.

- Pareto/NBD (Schmittlein, Morrison and Colombo 1987): purchases at a Poisson rate
  ``lambda ~ Gamma(r, alpha)`` until an exponential lifetime ``mu ~ Gamma(s, beta)`` ends.
- BG/NBD (Fader, Hardie and Lee 2005): the same purchases, but the customer may drop out only
  right after a repeat purchase, with probability ``p ~ Beta(a, b)``. One-time buyers are thus
  certainly alive, its well-known flaw.
- MBG/NBD (Batislam, Denizel and Filiztekin 2007): BG/NBD where the first purchase may also be
  the last, so one-time buyers are not certainly alive.

Each fitted model answers, per customer, ``P(alive)`` at the cut-off, ``P(at least one purchase
within t)`` (the probability the backtest judges) and the expected number of purchases within
``t`` (the classic ranking). This is a judge, not part of the scoring core: it needs numpy and
scipy and sees the whole calibration period at once.

Time is in whatever unit the summaries are in (days in the backtest, weeks in the literature);
the fitted ``alpha`` and ``beta`` are in that unit.

>>> import numpy as np
>>> x, t_x, T = np.array([0, 2, 5]), np.array([0, 30.43, 35]), np.array([38.86, 38.86, 38])
>>> model = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)  # CDNOW, Fader et al. 2005, weeks
>>> [round(float(v), 3) for v in model.expected_purchases(39.0, x, t_x, T)]
[0.195, 1.226, 3.277]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Summaries:
    """Per-customer calibration summaries, aggregated: identical rows carry a weight, so a fit
    over a large log costs what its distinct ``(x, t_x, T)`` cost."""

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    weight: FloatArray

    @classmethod
    def of(cls, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Summaries:
        """Validate and aggregate one row per customer.

        >>> s = Summaries.of([0, 0, 1], [0, 0, 3], [10, 10, 10])
        >>> s.weight.tolist(), float(s.weight.sum())
        ([2.0, 1.0], 3.0)
        """
        xs = np.asarray(x, dtype=np.float64)
        txs = np.asarray(t_x, dtype=np.float64)
        Ts = np.asarray(T, dtype=np.float64)
        if not (xs.shape == txs.shape == Ts.shape) or xs.ndim != 1:
            raise ValueError("x, t_x and T must be one-dimensional and of the same length")
        if xs.size == 0:
            raise ValueError("no customers to fit")
        if (xs < 0).any() or (txs < 0).any() or (txs > Ts + 1e-9).any():
            raise ValueError("summaries need x >= 0 and 0 <= t_x <= T")
        if ((xs == 0) & (txs > 0)).any():
            raise ValueError("a customer without repeat purchases has t_x = 0")
        rows = np.unique(np.stack([xs, txs, Ts], axis=1), axis=0, return_counts=True)
        table, counts = rows
        return cls(table[:, 0], table[:, 1], table[:, 2], counts.astype(np.float64))


class FittedModel(Protocol):
    """What every fitted model answers."""

    def log_likelihood(self, summaries: Summaries) -> float:
        """Total log-likelihood of the summaries."""
        ...

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(still a customer at ``T``)."""
        ...

    def p_purchase(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(at least one purchase in ``(T, T + t]``)."""
        ...

    def expected_purchases(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
                           ) -> FloatArray:
        """E[purchases in ``(T, T + t]``]."""
        ...


def _arrays(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> tuple[FloatArray, FloatArray,
                                                                   FloatArray]:
    return (np.asarray(x, dtype=np.float64), np.asarray(t_x, dtype=np.float64),
            np.asarray(T, dtype=np.float64))


def _gamma_poisson_head(r: float, alpha: float, x: FloatArray) -> FloatArray:
    """``log(Gamma(r + x) alpha^r / Gamma(r))``, the factor all three likelihoods share."""
    return np.asarray(special.gammaln(r + x) - special.gammaln(r) + r * math.log(alpha))


class _AliveOrGone:
    """What the three models share: each customer's likelihood splits into "still alive at
    ``T``" and "gone after ``t_x``" terms (``_log_terms``; BG/NBD: Fader, Hardie and Lee 2005,
    eq. 6; MBG/NBD: Batislam et al. 2007; Pareto/NBD: Fader and Hardie, note 008), from which the
    total likelihood and P(alive) follow the same way."""

    def _log_terms(self, x: FloatArray, t_x: FloatArray, T: FloatArray
                   ) -> tuple[FloatArray, FloatArray]:
        raise NotImplementedError

    def log_likelihood(self, summaries: Summaries) -> float:
        """Total log-likelihood of the summaries."""
        alive, gone = self._log_terms(summaries.x, summaries.t_x, summaries.T)
        return float(np.sum(summaries.weight * np.logaddexp(alive, gone)))

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(alive at ``T``)."""
        xs, txs, Ts = _arrays(x, t_x, T)
        alive, gone = self._log_terms(xs, txs, Ts)
        return np.asarray(np.exp(alive - np.logaddexp(alive, gone)))


class _BetaGeometric(_AliveOrGone):
    """BG/NBD and MBG/NBD: dropping out happens only at a purchase, so it cannot prevent the
    first one in a window, and given alive ``lambda ~ Gamma(r + x, alpha + T)``."""

    r: float
    alpha: float

    def p_purchase(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(alive) times P(a purchase within ``t`` | alive)."""
        xs, _, Ts = _arrays(x, t_x, T)
        none_if_alive = ((self.alpha + Ts) / (self.alpha + Ts + t)) ** (self.r + xs)
        return np.asarray(self.p_alive(x, t_x, T) * (1.0 - none_if_alive))


@dataclass(frozen=True)
class BGNBD(_BetaGeometric):
    """BG/NBD: dropout after a repeat purchase with probability ``p ~ Beta(a, b)``.

    >>> m = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(float(m.p_alive(0, 0.0, 30.0)), 3)  # one-time buyers are certainly alive
    1.0
    """

    r: float
    alpha: float
    a: float
    b: float

    def _log_terms(self, x: FloatArray, t_x: FloatArray, T: FloatArray
                   ) -> tuple[FloatArray, FloatArray]:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        head = _gamma_poisson_head(r, alpha, x)
        alive = (head + special.betaln(a, b + x) - special.betaln(a, b)
                 - (r + x) * np.log(alpha + T))
        with np.errstate(divide="ignore", invalid="ignore"):
            gone = np.where(x > 0, head + special.betaln(a + 1, b + np.maximum(x, 1) - 1)
                            - special.betaln(a, b) - (r + x) * np.log(alpha + t_x), -np.inf)
        return alive, gone

    def expected_purchases(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
                           ) -> FloatArray:
        """Conditional expectation (Fader, Hardie and Lee 2005, eq. 10)."""
        xs, txs, Ts = _arrays(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + Ts + t)
        hyp = special.hyp2f1(r + xs, b + xs, a + b + xs - 1.0, z)
        body = (a + b + xs - 1.0) / (a - 1.0) * (
            1.0 - ((alpha + Ts) / (alpha + Ts + t)) ** (r + xs) * hyp)
        odds = np.where(xs > 0, a / (b + np.maximum(xs, 1.0) - 1.0)
                        * ((alpha + Ts) / (alpha + txs)) ** (r + xs), 0.0)
        return np.asarray(body / (1.0 + odds))


@dataclass(frozen=True)
class MBGNBD(_BetaGeometric):
    """MBG/NBD: dropout after every purchase, the first included.

    >>> m = MBGNBD(r=0.525, alpha=6.183, a=0.891, b=1.614)
    >>> 0.0 < float(m.p_alive(0, 0.0, 30.0)) < 1.0
    True
    """

    r: float
    alpha: float
    a: float
    b: float

    def _log_terms(self, x: FloatArray, t_x: FloatArray, T: FloatArray
                   ) -> tuple[FloatArray, FloatArray]:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        head = _gamma_poisson_head(r, alpha, x)
        alive = (head + special.betaln(a, b + x + 1) - special.betaln(a, b)
                 - (r + x) * np.log(alpha + T))
        gone = (head + special.betaln(a + 1, b + x) - special.betaln(a, b)
                - (r + x) * np.log(alpha + t_x))
        return alive, gone

    def expected_purchases(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
                           ) -> FloatArray:
        """Conditional expectation of purchases within ``t`` (Batislam et al. 2007)."""
        xs, txs, Ts = _arrays(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + Ts + t)
        hyp = special.hyp2f1(r + xs, b + xs + 1.0, a + b + xs, z)
        body = (a + b + xs) / (a - 1.0) * (
            1.0 - hyp * ((alpha + Ts) / (alpha + Ts + t)) ** (r + xs))
        odds = a / (b + xs) * ((alpha + Ts) / (alpha + txs)) ** (r + xs)
        return np.asarray(body / (1.0 + odds))


# Gauss-Legendre nodes on [0, 1] for the one-dimensional integrals of Pareto/NBD.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(48)
_NODES = 0.5 * (_NODES + 1.0)
_WEIGHTS = 0.5 * _WEIGHTS


@dataclass(frozen=True)
class ParetoNBD(_AliveOrGone):
    """Pareto/NBD: Poisson purchases until an exponential lifetime ends.

    >>> m = ParetoNBD(r=0.553, alpha=10.578, s=0.606, beta=11.669)  # CDNOW, weeks
    >>> p = m.p_purchase(39.0, [0, 7], [0.0, 35.0], [38.0, 38.0])
    >>> bool(p[0] < p[1])
    True
    """

    r: float
    alpha: float
    s: float
    beta: float

    def _log_a0(self, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
        """``log A_0`` of Fader and Hardie's note 008, in the form that keeps ``z < 1``."""
        r, alpha, s, beta = self.r, self.alpha, self.s, self.beta
        rsx = r + s + x
        b_param: float | FloatArray
        if alpha >= beta:
            big, b_param = alpha, s + 1.0
            z_tx, z_T = (alpha - beta) / (alpha + t_x), (alpha - beta) / (alpha + T)
        else:
            big, b_param = beta, r + x
            z_tx, z_T = (beta - alpha) / (beta + t_x), (beta - alpha) / (beta + T)
        # Euler's transformation keeps the series bounded for z near 1:
        # 2F1(a, b; a + 1; z) = (1 - z)^-b 2F1(1, b; a + 1; z / (z - 1)).
        def log_hyp(z: FloatArray) -> FloatArray:
            return np.asarray(-b_param * np.log1p(-z)
                              + np.log(special.hyp2f1(1.0, b_param, rsx + 1.0, z / (z - 1.0))))

        first = log_hyp(z_tx) - rsx * np.log(big + t_x)
        second = log_hyp(z_T) - rsx * np.log(big + T)
        # first >= second always (the integrand is positive); equal when t_x == T.
        with np.errstate(divide="ignore"):
            return np.asarray(first + np.log(-np.expm1(np.minimum(second - first, 0.0))))

    def _log_terms(self, x: FloatArray, t_x: FloatArray, T: FloatArray
                   ) -> tuple[FloatArray, FloatArray]:
        r, alpha, s, beta = self.r, self.alpha, self.s, self.beta
        head = _gamma_poisson_head(r, alpha, x) + s * math.log(beta)
        alive = head - (r + x) * np.log(alpha + T) - s * np.log(beta + T)
        gone = head + math.log(s) - np.log(r + s + x) + self._log_a0(x, t_x, T)
        return alive, gone

    def p_purchase(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(alive) times P(a purchase within ``t`` | alive).

        Given alive, ``lambda ~ Gamma(r + x, alpha + T)`` and ``mu ~ Gamma(s, beta + T)``
        independently, and P(first purchase before death and before ``t``) is
        ``int_0^t E[lambda e^(-lambda u)] E[e^(-mu u)] du``, integrated by Gauss-Legendre.
        """
        xs, _, Ts = _arrays(x, t_x, T)
        shape = (self.r + xs)[..., None]
        rate = (self.alpha + Ts)[..., None]
        life = (self.beta + Ts)[..., None]
        u = t * _NODES
        density = (shape / rate * (rate / (rate + u)) ** (shape + 1.0)
                   * (life / (life + u)) ** self.s)
        if_alive = t * np.sum(density * _WEIGHTS, axis=-1)
        return np.asarray(self.p_alive(x, t_x, T) * np.minimum(if_alive, 1.0))

    def expected_purchases(self, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
                           ) -> FloatArray:
        """Conditional expectation of purchases within ``t`` (Schmittlein et al. 1987)."""
        xs, _, Ts = _arrays(x, t_x, T)
        r, alpha, s, beta = self.r, self.alpha, self.s, self.beta
        life = beta + Ts
        if abs(s - 1.0) < 1e-9:
            kept = life * np.log((life + t) / life)
        else:
            kept = life / (s - 1.0) * (1.0 - (life / (life + t)) ** (s - 1.0))
        return np.asarray(self.p_alive(x, t_x, T) * (r + xs) / (alpha + Ts) * kept)


@dataclass(frozen=True)
class Fit:
    """A fitted model and how the fit went."""

    model: FittedModel
    log_likelihood: float
    converged: bool


_MODELS: dict[str, type] = {"pareto_nbd": ParetoNBD, "bg_nbd": BGNBD, "mbg_nbd": MBGNBD}
#: Display names, in the order the backtest reports them.
MODEL_NAMES = {"pareto_nbd": "Pareto/NBD", "mbg_nbd": "MBG/NBD", "bg_nbd": "BG/NBD"}


def fit(kind: str, summaries: Summaries) -> Fit:
    """Maximum-likelihood fit of ``kind`` (``pareto_nbd``, ``bg_nbd`` or ``mbg_nbd``).

    Parameters are optimised on a log scale with time rescaled so the mean ``T`` is 10 (the
    optimiser then sees numbers of one order), and reported in the summaries' own unit.

    >>> s = Summaries.of([0, 1, 3, 0, 2, 5, 0, 1], [0, 4, 20, 0, 9, 25, 0, 2],
    ...                  [30, 30, 30, 28, 28, 29, 30, 27])
    >>> result = fit("mbg_nbd", s)
    >>> result.converged, result.log_likelihood < 0
    (True, True)
    """
    try:
        cls = _MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model {kind!r}; one of {sorted(_MODELS)}") from None
    scale = float(np.average(summaries.T, weights=summaries.weight)) / 10.0 or 1.0
    scaled = Summaries(summaries.x, summaries.t_x / scale, summaries.T / scale,
                       summaries.weight)
    names = [f.name for f in fields(cls)]
    total = float(summaries.weight.sum())

    def negative(log_params: FloatArray) -> float:
        params = np.exp(np.clip(log_params, -12.0, 12.0))
        with np.errstate(all="ignore"):
            value = cls(*params).log_likelihood(scaled)
        return -value / total if math.isfinite(value) else 1e10

    start = np.log(np.array([0.5, 1.0, 0.5, 1.0]))
    best = optimize.minimize(negative, start, method="Nelder-Mead",
                             options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
    polished = optimize.minimize(negative, best.x, method="L-BFGS-B")
    result = polished if polished.fun <= best.fun else best
    params = dict(zip(names, np.exp(np.clip(result.x, -12.0, 12.0)).tolist(), strict=True))
    for key in ("alpha", "beta"):
        if key in params:
            params[key] *= scale
    model = cls(**params)
    ll = model.log_likelihood(summaries)
    return Fit(model, ll, bool(math.isfinite(ll) and (best.success or polished.success)))


def summaries_from_orders(orders: dict[str, list[float]], cutoff: float, unit: float
                          ) -> tuple[list[str], Summaries, FloatArray, FloatArray, FloatArray]:
    """``(x, t_x, T)`` per customer from their order times up to ``cutoff``, in ``unit``
    seconds; orders within the same ``unit`` of each other count as one purchase occasion
    (one day for daily logs, the classic convention).

    Returns the customer ids, the aggregated summaries and the per-customer rows.

    >>> ids, s, x, t_x, T = summaries_from_orders({"a": [0.0, 86400.0, 90000.0], "b": [0.0]},
    ...                                            cutoff=10 * 86400.0, unit=86400.0)
    >>> ids, x.tolist(), t_x.tolist(), T.tolist()
    (['a', 'b'], [1.0, 0.0], [1.0, 0.0], [10.0, 10.0])
    """
    ids = sorted(orders)
    x = np.zeros(len(ids))
    t_x = np.zeros(len(ids))
    T = np.zeros(len(ids))
    for i, cid in enumerate(ids):
        times = sorted(orders[cid])
        first = times[0]
        occasions = {math.floor((ts - first) / unit) for ts in times}
        x[i] = len(occasions) - 1
        t_x[i] = max(occasions)
        T[i] = max((cutoff - first) / unit, float(max(occasions)))
    return ids, Summaries.of(x, t_x, T), x, t_x, T


#: The models the backtest fits, in the order it reports them: the two the judging names.
BACKTEST_MODELS = ("pareto_nbd", "mbg_nbd")


@dataclass(frozen=True)
class Benchmark:
    """One fitted model's predictions for every customer of a backtest."""

    kind: str
    fit: Fit
    customer_ids: list[str]
    p_purchase: FloatArray
    expected_purchases: FloatArray

    @property
    def name(self) -> str:
        """The model's display name."""
        return MODEL_NAMES[self.kind]

    def detail(self) -> dict[str, object]:
        """The fitted parameters (time in days) and the fit's log-likelihood."""
        params = {f.name: round(float(getattr(self.fit.model, f.name)), 6)
                  for f in fields(self.fit.model)}  # type: ignore[arg-type]
        return {"parameters": params, "log_likelihood": round(self.fit.log_likelihood, 3),
                "converged": self.fit.converged}


def benchmark(orders: dict[str, list[float]], cutoff: float, horizon_days: float,
              kinds: tuple[str, ...] = BACKTEST_MODELS) -> list[Benchmark]:
    """Fit each model on the order times (epoch seconds, all before ``cutoff``) and predict
    every customer's chance of ordering within ``horizon_days`` after it, and their expected
    orders then. Purchase occasions are days, the classic convention.

    >>> day = 86400.0
    >>> orders = {f"c{i}": [i * day, (i + 3 + i % 5) * day] if i % 3 else [i * day]
    ...           for i in range(40)}
    >>> [b.name for b in benchmark(orders, 60 * day, 30.0)]
    ['Pareto/NBD', 'MBG/NBD']
    """
    ids, summaries, x, t_x, T = summaries_from_orders(orders, cutoff, 86400.0)
    out = []
    for kind in kinds:
        fitted = fit(kind, summaries)
        model = fitted.model
        with np.errstate(all="ignore"):
            p = np.clip(np.nan_to_num(model.p_purchase(horizon_days, x, t_x, T)), 0.0, 1.0)
            expected = np.nan_to_num(model.expected_purchases(horizon_days, x, t_x, T))
        out.append(Benchmark(kind, fitted, ids, p, expected))
    return out


__all__ = ["BACKTEST_MODELS", "BGNBD", "MBGNBD", "MODEL_NAMES", "Benchmark", "Fit", "FittedModel",
           "ParetoNBD", "Summaries", "benchmark", "fit", "summaries_from_orders"]
