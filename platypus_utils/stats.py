"""Statistics for comparing two models on the same questions (component layer: numpy and scipy only).

`x[i]`, `y[i]` are two models' scores on question i (0/1, or in [0, 1] for TruthfulQA's mc2). scipy does
McNemar, the paired bootstrap, the normal interval and Benjamini-Hochberg. Written here: the stratified
bootstrap over groups (one-question groups pooled), the sign-flip test (exact by distinct magnitude, else
Monte Carlo refined near alpha), and the McNemar sample size (Connor 1987).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

DEFAULT_CONFIDENCE = 0.95
DEFAULT_N_BOOT = 2000


def _array(x) -> np.ndarray:
    return np.asarray(x, dtype=float).reshape(-1)


def is_binary(*arrays) -> bool:
    """True when every value is 0 or 1 (accuracy), so McNemar applies."""
    return all(np.isin(_array(a), (0.0, 1.0)).all() for a in arrays)


def discordant(x, y) -> tuple[int, int]:
    """(b, c): questions x got right and y wrong, and those y got right and x wrong."""
    x, y = _array(x), _array(y)
    if x.shape != y.shape:
        raise ValueError(f"paired scores of different lengths: {x.size} and {y.size}")
    return int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(_st.binomtest(min(b, c), b + c, 0.5).pvalue)


def bootstrap_means(diff, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` means of `diff` resampled with replacement, drawn from `rng`; one question resamples to itself."""
    d = _array(diff)
    if d.size == 0:
        raise ValueError("no paired questions to resample")
    if d.size == 1:
        return np.full(n_boot, d[0])
    batch = max(1, 2_000_000 // d.size)  # bounded memory for large subjects
    kw = {"n_resamples": n_boot, "batch": batch, "method": "percentile", "vectorized": True, "rng": rng}
    return _st.bootstrap((d,), np.mean, **kw).bootstrap_distribution


def percentile_interval(draws, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap draws (percentile method)."""
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(_array(draws), [tail, 1.0 - tail])
    return float(lo), float(hi)


def pool_singletons(draws: Sequence, groups: Sequence, rng: np.random.Generator) -> list[np.ndarray]:
    """Bootstrap draws per group, those of one-observation groups replaced by draws from all of them
    together (collapsed strata), so a mean over such groups does not look exact."""
    sizes = [_array(g).size for g in groups]
    singles = np.array([_array(g)[0] for g, n in zip(groups, sizes) if n == 1])
    if singles.size < 2:
        return [np.asarray(d) for d in draws]
    return [
        singles[rng.integers(0, singles.size, size=len(d))] if n == 1 else np.asarray(d) for d, n in zip(draws, sizes)
    ]


@dataclass(frozen=True)
class FlipP:
    """A sign-flip p-value: `exact`, or Monte Carlo over `n` resamples with standard error `mc_error`."""

    p: float
    mc_error: float = 0.0
    n: int = 0
    exact: bool = True


EXACT_STATES = 1_000_000  # sign patterns (as magnitude counts) enumerated exactly up to this many
MAX_FLIPS = 1_000_000  # Monte Carlo resamples at most, near the threshold
MAX_DRAWS = 200_000_000  # resamples x distinct magnitudes: bounds the time on continuous scores
MARGIN_SE = 4.0  # refine until the threshold is this many Monte Carlo errors away (or MAX_FLIPS)


def _magnitudes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct |x| (to 12 significant digits) and their counts: T = sum_j a_j (2 B_j - n_j), B_j ~ Bin(n_j, 1/2)."""
    return np.unique(np.abs(x).round(12 - int(np.floor(np.log10(np.abs(x).max())))), return_counts=True)


def _exact_flip_p(a: np.ndarray, n: np.ndarray, observed: float) -> float:
    """P(|T| >= |observed|) by convolving each magnitude's binomial."""
    values, probs = np.zeros(1), np.ones(1)
    digits = 12 - int(np.floor(np.log10(float((a * n).sum()))))  # sums kept to 12 significant digits
    for aj, nj in zip(a, n):
        k = np.arange(nj + 1)
        step_v, step_p = aj * (2 * k - nj), _st.binom.pmf(k, nj, 0.5)
        values = (values[:, None] + step_v[None, :]).ravel()
        probs = (probs[:, None] * step_p[None, :]).ravel()
        values, inverse = np.unique(values.round(digits), return_inverse=True)
        probs = np.bincount(inverse.ravel(), weights=probs)
    tol = 1e-9 * max(1.0, abs(observed))
    return float(min(1.0, probs[np.abs(values) >= abs(observed) - tol].sum()))


def _mc_hits(a: np.ndarray, n: np.ndarray, observed: float, m: int, rng: np.random.Generator) -> int:
    """How many of m null draws of T reach |observed|."""
    hits, chunk = 0, max(1, 2_000_000 // a.size)
    tol = 1e-9 * max(1.0, abs(observed))
    single = n == 1
    cdfs = [_st.binom.cdf(np.arange(nj + 1), nj, 0.5) for nj in n[~single]]
    for start in range(0, m, chunk):
        k = min(chunk, m - start)
        t = (2 * rng.integers(0, 2, size=(k, int(single.sum()))) - 1) @ a[single]
        for aj, cdf in zip(a[~single], cdfs):  # Binomial(n_j, 1/2) by its inverse CDF: faster than rng.binomial
            b = np.minimum(np.searchsorted(cdf, rng.random(k), side="right"), len(cdf) - 1)
            t = t + aj * (2 * b - (len(cdf) - 1))
        hits += int((np.abs(t) >= abs(observed) - tol).sum())
    return hits


def sign_flip_test(diffs, weights=None, n_perm: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = 0.05) -> FlipP:
    """Two-sided paired randomisation test of T = sum(weights * diffs), each difference keeping or flipping
    its sign. Exact up to EXACT_STATES sign patterns (by distinct magnitude); else Monte Carlo,
    p = (1 + hits) / (1 + n), seeded by `seed` and the data, n_perm resamples doubled while `alpha` lies
    within MARGIN_SE Monte Carlo errors of p (at most MAX_FLIPS, and MAX_DRAWS / distinct magnitudes)."""
    x = _array(diffs) * (1.0 if weights is None else _array(weights))
    x = x[x != 0]  # a zero difference flips to itself
    if x.size == 0:
        return FlipP(1.0)
    observed = float(x.sum())
    a, n = _magnitudes(x)
    if float(np.log(n + 1.0).sum()) <= math.log(max(EXACT_STATES, 1)):  # prod(n_j + 1) sign patterns
        return FlipP(_exact_flip_p(a, n, observed))
    rng = np.random.default_rng([seed, zlib.crc32(np.sort(x).tobytes())])
    cap = max(n_perm, min(MAX_FLIPS, MAX_DRAWS // a.size))
    done, hits, m = 0, 0, n_perm
    while True:
        hits += _mc_hits(a, n, observed, m, rng)
        done += m
        p = (1 + hits) / (1 + done)
        se = math.sqrt(p * (1 - p) / done)
        if abs(p - alpha) > MARGIN_SE * se or done >= cap:
            return FlipP(p, se, done, False)
        m = min(done, cap - done)  # double


def sign_flip_groups(groups: Sequence, n_perm: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = 0.05) -> FlipP:
    """sign_flip_test of T = mean over groups of the group's mean difference."""
    arrays = [_array(g) for g in groups]
    weights = np.concatenate([np.full(a.size, 1.0 / (len(arrays) * a.size)) for a in arrays])
    return sign_flip_test(np.concatenate(arrays), weights, n_perm, seed, alpha)


def unpaired_interval(
    delta: float, se_x: float, se_y: float, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float, float]:
    """(low, high, p) of a difference of two independent estimates: normal, sqrt(se_x^2 + se_y^2)."""
    se = math.hypot(se_x, se_y)
    if se == 0:
        return delta, delta, (1.0 if delta == 0 else 0.0)
    z = _st.norm.ppf(0.5 + confidence / 2.0)
    return delta - z * se, delta + z * se, float(2.0 * _st.norm.sf(abs(delta) / se))


def bh_adjust(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN entries are left out of the family and stay NaN."""
    p = _array(pvalues)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    out[ok] = _st.false_discovery_control(p[ok], method="bh")
    return out


def questions_for_change(delta: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Paired questions for the two-sided McNemar test to detect `delta` (a proportion) when the models
    disagree on a share `discordance` (Connor 1987: n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2 / delta^2)."""
    if not 0 < abs(delta) <= discordance <= 1:
        raise ValueError(f"need 0 < |delta| <= discordance <= 1, got delta={delta}, discordance={discordance}")
    za, zb = _st.norm.ppf(1 - alpha / 2), _st.norm.ppf(power)
    n = (za * math.sqrt(discordance) + zb * math.sqrt(discordance - delta**2)) ** 2 / delta**2
    return int(math.ceil(n))
