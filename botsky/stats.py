"""Statistical primitives behind the leaderboard: pure functions of counts and arrays.

Every method here is described, with its assumptions and references, in
``docs/statistics.md``; ``botsky.scoring`` assembles them into the leaderboard, and
``botsky plan`` (``botsky.stats_cli``) uses the power functions. Nothing here reads the ledger,
the clock or settings.

- ``wilson_interval``: fixed-n interval for one look (Wilson 1927).
- ``beta_binomial_cs``: anytime-valid confidence sequence for a Bernoulli rate, the
  beta-binomial mixture bound (Howard, Ramdas, McAuliffe, Sekhon 2021).
- ``mixture_halfwidth``: the two-sided normal-mixture (Robbins) boundary used as an asymptotic
  confidence sequence for a difference of rates (Waudby-Smith et al. 2024).
- ``cluster_variance``: cluster-robust variance of a mean or of a difference of two means,
  clustered by mentioned user (statsmodels OLS, ``cov_type="cluster"``).
- ``km_probability``: Kaplan–Meier probability of an answer within the window, open mentions
  censored (statsmodels ``SurvfuncRight``).
- ``factor_effects``: logistic regression of success on categorical factors (model, persona)
  with cluster-robust standard errors (statsmodels GLM).
- ``fixed_n_per_arm`` / ``anytime_n_per_arm``: sample sizes for planning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.special import betaln
from scipy.stats import norm

__all__ = [
    "CS_PRIOR",
    "FactorEffects",
    "FactorLevel",
    "FactorTest",
    "anytime_n_per_arm",
    "beta_binomial_cs",
    "cluster_variance",
    "factor_effects",
    "fixed_n_per_arm",
    "km_probability",
    "mixture_halfwidth",
    "mixture_halfwidths",
    "mixture_rho",
    "wilson_interval",
]

# Beta(a, b) mixing distribution of the confidence sequence: a = b = 5, a prior worth ten
# observations centred on 1/2. Width relative to the fixed-n Wilson interval at 95% and
# p = 0.3: 1.53x at n = 50, 1.73x at 500, 1.90x at 5,000, 2.05x at 50,000. a = b = 0.5 gives
# 1.62/1.81/1.97/2.12, a = b = 50 gives 1.72/2.38/2.64/2.77 (docs/statistics.md).
CS_PRIOR: Final = (5.0, 5.0)
# The normal mixture for differences is tuned to be tightest at this information
# (1 / variance of the difference): 1,000 decided mentions per arm at rates near 0.3.
_TUNE_INFORMATION: Final = 1000 / (2 * 0.3 * 0.7)


def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n``; ``(0.0, 1.0)`` when ``n == 0``.

    A fixed-n interval: valid for one look at a sample size fixed in advance. ``n`` may be an
    effective (design-effect adjusted, fractional) sample size.
    """
    if n <= 0:
        return (0.0, 1.0)
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1.0 - p), 0.0) / n + z2 / (4 * n * n)) / denom
    # At p == 0 (p == 1) the lower (upper) bound is exactly 0 (1), but float rounding leaves
    # it a hair off, which would print as a nonzero bound or fail a "low <= p" check.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def beta_binomial_cs(
    successes: float, n: float, alpha: float = 0.05, prior: tuple[float, float] = CS_PRIOR
) -> tuple[float, float]:
    """The beta-binomial mixture confidence sequence for a Bernoulli rate at ``(successes, n)``.

    For each candidate rate p, ``M(p) = B(a + S, b + n - S) / B(a, b) / (p^S (1 - p)^(n - S))``
    is the Beta(a, b)-mixture likelihood ratio against p: a nonnegative martingale with mean 1
    when the outcomes are Bernoulli(p) given the past, so by Ville's inequality
    ``{p : M(p) < 1/alpha}`` holds the true rate at every n at once with probability at least
    ``1 - alpha`` (Howard et al. 2021, section 3.2 and Proposition 7/eq. (27)). ``log M`` is
    convex in p with its minimum (<= 0) at ``S/n``, so the set is an interval whose ends are
    found by root finding. ``(0, 1)`` when ``n == 0``.
    """
    if n <= 0:
        return (0.0, 1.0)
    a, b = prior
    s, f = float(successes), float(n) - float(successes)
    log_mix = float(betaln(a + s, b + f) - betaln(a, b))
    threshold = math.log(1.0 / alpha)

    def excess(p: float) -> float:
        # log M(p) - log(1/alpha); the xlogy-style guards keep 0 * log 0 at 0.
        ll = (s * math.log(p) if s > 0 else 0.0) + (f * math.log1p(-p) if f > 0 else 0.0)
        return log_mix - ll - threshold

    phat = s / float(n)
    tiny = 1e-15
    low = 0.0 if s <= 0 or excess(tiny) <= 0 else float(brentq(excess, tiny, phat, xtol=1e-12))
    high = (
        1.0
        if f <= 0 or excess(1 - tiny) <= 0
        else float(brentq(excess, phat, 1 - tiny, xtol=1e-12))
    )
    return (low, high)


def mixture_halfwidth(variance: float, alpha: float, rho: float | None = None) -> float:
    """Half-width of the two-sided normal-mixture boundary for an estimate with ``variance``.

    With information ``t = 1/variance``, Robbins' normal mixture gives
    ``P(exists t: |W(t)| >= sqrt((t + rho) log((t + rho) / (rho alpha^2)))) <= alpha`` for a
    Brownian motion W; an estimate whose error process is asymptotically W(t)/t therefore has
    the confidence sequence ``estimate ± sqrt(v (1 + rho v) log((1 + rho v) / (rho v alpha^2)))``
    (Waudby-Smith et al. 2024, asymptotic confidence sequences). ``rho`` (information units)
    sets where the boundary is tightest; by default ``mixture_rho(alpha)``.
    """
    if variance <= 0 or not math.isfinite(variance):
        return math.inf if variance > 0 else 0.0
    rho = mixture_rho(alpha) if rho is None else rho
    rv = rho * variance
    return math.sqrt(variance * (1 + rv) * math.log((1 + rv) / (rv * alpha * alpha)))


def mixture_halfwidths(variance: np.ndarray, alpha: float, rho: float | None = None) -> np.ndarray:
    """``mixture_halfwidth`` over an array of positive variances (simulations, plots)."""
    rho = mixture_rho(alpha) if rho is None else rho
    rv = rho * variance
    return np.sqrt(variance * (1 + rv) * np.log((1 + rv) / (rv * alpha * alpha)))


@lru_cache(maxsize=64)
def mixture_rho(alpha: float, information: float = _TUNE_INFORMATION) -> float:
    """The ``rho`` that makes the normal-mixture boundary narrowest at ``information``."""

    def width(log_rho: float) -> float:
        r = math.exp(log_rho)
        t = information
        return (t + r) * math.log((t + r) / (r * alpha * alpha))

    found = minimize_scalar(width, bounds=(-10.0, 20.0), method="bounded")
    return float(math.exp(found.x))


def cluster_variance(
    y: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | np.ndarray,
    arm_b: Sequence[bool] | np.ndarray | None = None,
) -> float:
    """Cluster-robust variance of a mean of ``y`` (or of a difference of two means).

    Without ``arm_b``: the variance of ``mean(y)``. With ``arm_b`` (True for the rows of the
    second arm): the variance of ``mean(y[~arm_b]) - mean(y[arm_b])``, which also counts the
    covariance between the arms through people mentioned in both. Both are the sandwich
    (Liang-Zeger) variance of an OLS coefficient, clusters being ``clusters`` (the mentioned
    user), from statsmodels with its default small-sample correction
    ``G/(G-1) * (N-1)/(N-K)``. NaN when there are fewer than two clusters, or no more rows
    than coefficients (N = K: the correction divides by zero; one decided mention per arm).
    """
    import statsmodels.api as sm

    yy = np.asarray(y, dtype=float)
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    if len(yy) < 2 or codes.max(initial=0) < 1:
        return math.nan
    if arm_b is None:
        exog = np.ones((len(yy), 1))
        index = 0
    else:
        b = np.asarray(arm_b, dtype=float)
        if b.min() == b.max():
            return math.nan
        # Columns (1, in arm A): the second coefficient is mean(A) - mean(B).
        exog = np.column_stack([np.ones(len(yy)), 1.0 - b])
        index = 1
    if len(yy) <= exog.shape[1]:
        return math.nan
    fit = sm.OLS(yy, exog).fit(cov_type="cluster", cov_kwds={"groups": codes})
    return float(fit.cov_params()[index, index])


def km_probability(
    durations: Sequence[float] | np.ndarray, events: Sequence[bool] | np.ndarray, at: float
) -> tuple[float, float] | None:
    """Kaplan–Meier probability of an event by time ``at``, and its Greenwood standard error.

    ``durations`` are follow-up times (time to the answer, or to censoring: the reading time or
    the end of the window), ``events`` whether an answer was seen. None when there are no rows.
    """
    from statsmodels.duration.survfunc import SurvfuncRight

    d = np.asarray(durations, dtype=float)
    e = np.asarray(events, dtype=bool)
    if len(d) == 0:
        return None
    if not e.any():
        return (0.0, 0.0)
    sf = SurvfuncRight(d, e.astype(int))
    times = np.asarray(sf.surv_times)
    i = int(np.searchsorted(times, at, side="right")) - 1
    if i < 0:
        return (0.0, 0.0)
    return (1.0 - float(sf.surv_prob[i]), float(sf.surv_prob_se[i]))


# --- persona vs model --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FactorLevel:
    """One level of a factor: its odds ratio against the reference level (95%, cluster-robust)
    and the success rate standardized over the other factors' observed mix."""

    factor: str
    level: str
    n: int
    odds_ratio: float | None  # None for the reference level
    or_low: float | None
    or_high: float | None
    p_value: float | None
    adjusted_rate: float


@dataclass(frozen=True, slots=True)
class FactorTest:
    """Joint Wald test that every level of ``factor`` has the same effect (cluster-robust)."""

    factor: str
    chi2: float
    df: int
    p_value: float


@dataclass(frozen=True, slots=True)
class FactorEffects:
    """``botsky scores --by model,persona``: a logistic model with the factors as main effects."""

    factors: tuple[str, ...]
    n: int
    clusters: int
    levels: list[FactorLevel]
    tests: list[FactorTest]
    problem: str | None = None  # why no model could be fitted (then levels/tests are empty)


def factor_effects(
    y: Sequence[int] | np.ndarray,
    factors: Mapping[str, Sequence[str]],
    clusters: Sequence[str],
    alpha: float = 0.05,
) -> FactorEffects:
    """Fit ``logit P(success) = b0 + sum over factors of b[factor][level]`` by maximum likelihood
    (statsmodels GLM, binomial family), standard errors clustered by ``clusters``.

    The reference level of each factor is its most frequent one. When the factors are not
    crossed (for instance each persona runs on one model only), their effects cannot be told
    apart: the result carries ``problem`` and no estimates.
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    names = tuple(factors)
    yy = np.asarray(y, dtype=float)
    n = len(yy)
    _, cl = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    n_clusters = int(cl.max(initial=-1)) + 1
    empty = FactorEffects(names, n, n_clusters, [], [])
    if n == 0:
        return _problem(empty, "no decided mentions")
    columns: list[np.ndarray] = [np.ones(n)]
    layout: list[tuple[str, str, int | None, int]] = []  # factor, level, column, count
    for name in names:
        values = np.asarray(factors[name], dtype=object).astype(str)
        uniq, counts = np.unique(values, return_counts=True)
        order = sorted(range(len(uniq)), key=lambda i: (-counts[i], uniq[i]))
        layout.append((name, str(uniq[order[0]]), None, int(counts[order[0]])))
        for i in order[1:]:
            layout.append((name, str(uniq[i]), len(columns), int(counts[i])))
            columns.append((values == uniq[i]).astype(float))
    exog = np.column_stack(columns)
    if np.linalg.matrix_rank(exog) < exog.shape[1]:
        return _problem(
            empty,
            f"{' and '.join(names)} are not crossed (some levels always occur together), "
            "so their effects cannot be separated: run a persona on several models",
        )
    if len({*yy.tolist()}) < 2:
        return _problem(empty, "every decided mention has the same outcome")
    if n_clusters < 2:
        return _problem(empty, "fewer than two mentioned users")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fit = sm.GLM(yy, exog, family=sm.families.Binomial()).fit(
                cov_type="cluster", cov_kwds={"groups": cl}
            )
        except (PerfectSeparationWarning, np.linalg.LinAlgError, ValueError) as exc:
            return _problem(empty, f"the model cannot be fitted ({type(exc).__name__}: {exc})")
    params = np.asarray(fit.params)
    cov = np.asarray(fit.cov_params())
    if not np.all(np.isfinite(cov)) or np.any(np.abs(params) > 25):
        return _problem(empty, "a level always or never succeeds: its effect is not estimable")
    z = float(norm.ppf(1 - alpha / 2))
    levels: list[FactorLevel] = []
    for name, level, col, count in layout:
        # Standardized rate: everyone's predicted probability with this factor set to level.
        x = exog.copy()
        for other_name, _lvl, other_col, _cnt in layout:
            if other_name == name and other_col is not None:
                x[:, other_col] = 1.0 if other_col == col else 0.0
        adjusted = float(np.mean(1.0 / (1.0 + np.exp(-(x @ params)))))
        if col is None:
            levels.append(FactorLevel(name, level, count, None, None, None, None, adjusted))
            continue
        b, se = float(params[col]), math.sqrt(float(cov[col, col]))
        p_value = float(2 * norm.sf(abs(b) / se)) if se > 0 else None
        levels.append(
            FactorLevel(
                name,
                level,
                count,
                math.exp(b),
                math.exp(b - z * se),
                math.exp(b + z * se),
                p_value,
                adjusted,
            )
        )
    tests = []
    for name in names:
        cols = [c for f, _l, c, _n in layout if f == name and c is not None]
        if not cols:
            continue
        r = np.zeros((len(cols), exog.shape[1]))
        for i, c in enumerate(cols):
            r[i, c] = 1.0
        b = r @ params
        v = r @ cov @ r.T
        chi2 = float(b @ np.linalg.solve(v, b))
        from scipy.stats import chi2 as chi2_dist

        tests.append(FactorTest(name, chi2, len(cols), float(chi2_dist.sf(chi2, len(cols)))))
    return FactorEffects(names, n, n_clusters, levels, tests)


def _problem(empty: FactorEffects, why: str) -> FactorEffects:
    return FactorEffects(empty.factors, empty.n, empty.clusters, [], [], problem=why)


# --- planning --------------------------------------------------------------------------------


def fixed_n_per_arm(
    p1: float, p2: float, *, alpha: float = 0.05, power: float = 0.8, design_effect: float = 1.0
) -> float:
    """Decided mentions per arm for a two-sided two-proportion z-test at one look.

    The classic formula (Fleiss, Levin, Paik 2003, eq. 4.14, without continuity correction):
    ``n = (z_{1-a/2} sqrt(2 pbar qbar) + z_power sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2``,
    times the design effect.
    """
    if p1 == p2:
        return math.inf
    za, zb = float(norm.ppf(1 - alpha / 2)), float(norm.ppf(power))
    pbar = (p1 + p2) / 2
    root = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return design_effect * root * root / (p1 - p2) ** 2


def anytime_n_per_arm(
    p1: float,
    p2: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    design_effect: float = 1.0,
    rho: float | None = None,
) -> float:
    """Decided mentions per arm after which the anytime-valid rule separates ``p1`` from ``p2``
    with probability at least ``power``.

    The rule declares a difference once ``|estimate| > h(v)``, h being ``mixture_halfwidth`` at
    the estimate's variance v. At a single n the estimate is about ``N(delta, v)``, so it
    declares with probability ``Phi((|delta| - h(v)) / sqrt(v))``; n solves that equal to
    ``power``. Because the rule is read continuously it declares at or before that n at least
    as often, so this n is an upper bound (the test suite checks by simulation that it reaches
    the power).
    """
    delta = abs(p1 - p2)
    if delta == 0:
        return math.inf
    zb = float(norm.ppf(power))
    unit = design_effect * (p1 * (1 - p1) + p2 * (1 - p2))  # v = unit / n

    def gap(log_n: float) -> float:
        v = unit / math.exp(log_n)
        return delta - mixture_halfwidth(v, alpha, rho) - zb * math.sqrt(v)

    lo, hi = 0.0, 40.0
    if gap(hi) < 0:
        return math.inf
    if gap(lo) >= 0:
        return 1.0
    return math.exp(float(brentq(gap, lo, hi, xtol=1e-9)))
