"""stats: paired interval, exact McNemar, Benjamini-Hochberg, power - against hand-computed values.

paired_bootstrap (scipy's) and questions_for_change_unpaired are reference formulas kept here, beside the package's
bootstrap_means / percentile_interval and its paired sample size; stratified_interval runs analysis.paired's own
stratified path on groups of differences."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, bootstrap, false_discovery_control, norm, permutation_test

from platypus_utils import stats

# a small table: 10 questions, model x right on 7, y right on 4; discordant b = 4 (x only), c = 1 (y only)
X = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
Y = [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]


def paired_bootstrap(x, y, n_boot=stats.DEFAULT_N_BOOT, confidence=stats.DEFAULT_CONFIDENCE, seed=0):
    """(mean(x - y), low, high): scipy's paired percentile bootstrap interval of the mean difference."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired scores of different lengths: {x.size} and {y.size}")
    d = float((x - y).mean())
    if x.size < 2:
        return d, d, d
    kw = {"n_resamples": n_boot, "confidence_level": confidence, "method": "percentile", "paired": True}
    rng = np.random.default_rng(seed)
    got = bootstrap((x, y), lambda a, b, axis: (a - b).mean(axis=axis), rng=rng, **kw).confidence_interval
    return d, float(got.low), float(got.high)


def stratified_interval(groups, n_boot=stats.DEFAULT_N_BOOT, confidence=stats.DEFAULT_CONFIDENCE, seed=0):
    """(mean over groups of the group's mean difference, low, high) as analysis.paired makes it: each group one
    subject (`_unit`: its bootstrap draws), then their mean (`_group`: one-question subjects pooled), in score units."""
    from platypus_utils.analysis.paired import StatsSettings, _group, _unit

    st, rng = StatsSettings(confidence, n_boot, 0.05, seed), np.random.default_rng(seed)
    units = []
    for g in groups:
        d = pd.Series(np.asarray(g, dtype=float).reshape(-1))
        units.append(_unit(d, pd.Series(np.zeros(len(d))), (None,) * 3, (None,) * 3, st, rng))
    out = _group(*zip(*units), st, rng)
    return out["delta"] / 100, out["ci_low"] / 100, out["ci_high"] / 100


def questions_for_change_unpaired(delta, accuracy, alpha=0.05, power=0.8):
    """Questions per model to detect `delta` between independent accuracies around `accuracy` (z test)."""
    p1, p2 = accuracy - delta / 2, accuracy + delta / 2
    if not (0 < p1 < 1 and 0 < p2 < 1):
        raise ValueError(f"accuracy {accuracy} +- {delta}/2 must lie in (0, 1)")
    pbar = (p1 + p2) / 2
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / delta**2
    return int(math.ceil(n))


def test_discordant_and_exact_mcnemar_by_hand():
    assert stats.discordant(X, Y) == (4, 1)
    # 2 * P(Bin(5, 1/2) <= 1) = 2 * (1 + 5) / 32
    assert stats.mcnemar_exact(4, 1) == pytest.approx(12 / 32)
    # b = 8, c = 2: 2 * (1 + 10 + 45) / 1024
    assert stats.mcnemar_exact(8, 2) == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(3, 3) == 1.0
    assert stats.mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    with pytest.raises(ValueError):
        stats.discordant([1, 0], [1])


def test_paired_bootstrap_interval_matches_its_exact_distribution():
    # d = x - y takes +1 four times, -1 once, 0 five times: the bootstrap mean of 10 draws has mean 0.3 and
    # variance var(d)/10 with var(d) (population) = E[d^2] - 0.09 = 0.5 - 0.09 = 0.41
    mean, lo, hi = paired_bootstrap(X, Y, n_boot=40_000, confidence=0.95, seed=1)
    assert mean == pytest.approx(0.3)
    draws = stats.bootstrap_means(np.subtract(X, Y), 40_000, np.random.default_rng(1))
    assert draws.mean() == pytest.approx(0.3, abs=0.005)
    assert draws.std() == pytest.approx(math.sqrt(0.41 / 10), rel=0.02)
    # the percentile interval sits on the lattice of means k/10; the exact 2.5% and 97.5% quantiles
    # of the resampled mean are -0.1 and 0.7 (enumerated in the next test)
    assert (lo, hi) == (pytest.approx(-0.1), pytest.approx(0.7))
    assert stats.percentile_interval(draws, 0.95) == (pytest.approx(-0.1), pytest.approx(0.7))  # the package's
    assert paired_bootstrap(X, Y, n_boot=2000, seed=3) == paired_bootstrap(X, Y, n_boot=2000, seed=3)
    # scipy's bootstrap draws from the generator it is given: the same seed, the same draws
    again = stats.bootstrap_means(np.subtract(X, Y), 40_000, np.random.default_rng(1))
    assert (draws == again).all() and stats.bootstrap_means([0.5], 3, np.random.default_rng(0)).tolist() == [0.5] * 3


def test_exact_quantiles_by_enumeration():
    # the claim above, checked: distribution of sum of 10 draws from {+1 x4, -1 x1, 0 x5}
    from math import factorial

    probs = {}
    for a in range(11):  # number of +1
        for b in range(11 - a):  # number of -1
            c = 10 - a - b
            p = factorial(10) / (factorial(a) * factorial(b) * factorial(c)) * 0.4**a * 0.1**b * 0.5**c
            probs[a - b] = probs.get(a - b, 0) + p
    cdf, acc = {}, 0.0
    for k in sorted(probs):
        acc += probs[k]
        cdf[k] = acc
    assert min(k for k in cdf if cdf[k] >= 0.025) == -1  # P(S <= -2) = 0.0144, P(S <= -1) = 0.0438
    assert min(k for k in cdf if cdf[k] >= 0.975) == 7  # P(S <= 6) = 0.9634, P(S <= 7) = 0.9909


def test_stratified_interval_averages_subjects_not_questions():
    small, big = np.ones(2), np.zeros(98)
    mean, lo, hi = stratified_interval([small, big], n_boot=500, seed=0)
    assert mean == pytest.approx(0.5)  # (1 + 0) / 2, not 2/100
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)  # constant within each subject


def test_stratified_interval_pools_one_question_subjects():
    """One question per subject (a small evaluation): the subjects' differences are resampled together, so
    the interval has the width of a bootstrap over them, not zero (a subject of one cannot be resampled)."""
    diffs = [np.array([v]) for v in [1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]]
    mean, lo, hi = stratified_interval(diffs, n_boot=4000, seed=0)
    plain = paired_bootstrap(np.concatenate(diffs), np.zeros(10), n_boot=4000, seed=0)
    assert mean == pytest.approx(0.3)
    assert hi - lo == pytest.approx(plain[2] - plain[1], abs=0.11) and hi - lo > 0.5
    # a larger subject keeps its own resampling beside the pooled singletons
    mean, lo, hi = stratified_interval([np.zeros(50), np.array([1.0]), np.array([-1.0])], n_boot=2000)
    assert mean == pytest.approx(0.0) and lo < 0 < hi


def test_weighted_sign_flip_is_the_group_test_with_its_weights():
    groups = [np.array([1.0, 0.0, 1.0]), np.array([-1.0]), np.array([1.0, 1.0, 0.0, 1.0, 0.0])]
    weights = np.concatenate([np.full(len(g), 1 / (3 * len(g))) for g in groups])
    a = stats.sign_flip_groups(groups, n_perm=4000, seed=3).p
    b = stats.sign_flip_test(np.concatenate(groups), weights, n_perm=4000, seed=3).p
    assert a == b
    # a handful of questions can never give a tiny p-value: at best 1/2^k over the non-zero differences
    assert stats.sign_flip_test(np.ones(6), np.full(6, 1 / 6), n_perm=4000, seed=0).p >= 2 / 2**6 - 0.01


def test_sign_flip_agrees_with_mcnemar_on_one_subject():
    d = np.subtract(X, Y)
    p = stats.sign_flip_groups([d], n_perm=40_000, seed=0).p
    assert p == pytest.approx(12 / 32, abs=1e-12)  # exact: one binomial over the 5 discordant questions
    assert stats.sign_flip_groups([np.zeros(5)]).p == 1.0
    many = np.array([1.0] * 60 + [-1.0] * 35 + [0.0] * 20)  # 95 discordant: still exact, equals McNemar
    got = stats.sign_flip_test(many)
    assert got.exact and got.mc_error == 0 and got.p == pytest.approx(binomtest(35, 95, 0.5).pvalue, rel=1e-9)


def test_exact_sign_flip_is_scipys_permutation_test():
    x = np.random.default_rng(1).normal(0.3, 1.0, 14)  # 14 distinct magnitudes: 2^14 sign patterns
    want = permutation_test(
        (x,), lambda a, axis: a.sum(axis=axis), permutation_type="samples", n_resamples=np.inf, vectorized=True
    ).pvalue
    got = stats.sign_flip_test(x)
    assert got.exact and got.p == pytest.approx(want, rel=1e-9)
    # two groups (subjects) of 0/1 differences weighted 1/(2 n_s): the exact law of the mean of the means
    groups = [np.array([1.0, 1, 1, -1, 1, 0]), np.array([1.0, 1, -1, 1])]
    by_hand = 0.0
    t_obs = np.mean([g.mean() for g in groups])
    for signs in itertools.product([-1, 1], repeat=9):
        s1, s2 = np.array(signs[:5]), np.array(signs[5:])
        t = (s1.sum() / 6 + s2.sum() / 4) / 2
        by_hand += (abs(t) >= abs(t_obs) - 1e-12) / 2**9
    assert stats.sign_flip_groups(groups).p == pytest.approx(by_hand, rel=1e-12)


def test_monte_carlo_sign_flip_is_seeded_by_the_data_and_resamples_more_near_alpha(monkeypatch):
    x = np.random.default_rng(2).normal(0.5, 1.0, 12)
    exact = stats.sign_flip_test(x).p
    monkeypatch.setattr(stats, "EXACT_STATES", 0)  # force the Monte Carlo path on a case known exactly
    monkeypatch.setattr(stats, "MAX_FLIPS", 64_000)
    far = stats.sign_flip_test(x, n_perm=1000, alpha=exact + 0.3)
    assert not far.exact and far.n == 1000 and far.mc_error == pytest.approx(math.sqrt(far.p * (1 - far.p) / 1000))
    # the same data in another order, or in another row of the table, gives the same p-value
    assert stats.sign_flip_test(x[::-1], n_perm=1000, alpha=exact + 0.3) == far
    near = stats.sign_flip_test(x, n_perm=1000, alpha=exact)  # p sits on the threshold: resample to the cap
    assert near.n == 64_000 and abs(near.p - exact) < 4.5 * near.mc_error and near.mc_error < far.mc_error / 7
    assert stats.sign_flip_test(x, n_perm=1000, seed=1, alpha=exact + 0.3) != far  # the seed still counts


def test_unpaired_interval_is_the_normal_one():
    lo, hi, p = stats.unpaired_interval(0.10, 0.03, 0.04)
    assert hi - 0.10 == pytest.approx(1.959964 * 0.05, rel=1e-5) and lo == pytest.approx(0.2 - hi)
    assert p == pytest.approx(2 * (1 - 0.9772499), rel=1e-4)  # z = 2


def test_benjamini_hochberg_on_the_1995_example():
    # Benjamini & Hochberg (1995), section 4: 15 p-values; at q = 0.05 the first four are rejected
    p = [
        0.0001,
        0.0004,
        0.0019,
        0.0095,
        0.0201,
        0.0278,
        0.0298,
        0.0344,
        0.0459,
        0.3240,
        0.4262,
        0.5719,
        0.6528,
        0.7590,
        1.000,
    ]
    q = stats.bh_adjust(p)
    assert int((q <= 0.05).sum()) == 4
    assert np.allclose(q, false_discovery_control(p, method="bh"))
    by_hand = [min(min(p[j] * 15 / (j + 1) for j in range(i, 15)), 1.0) for i in range(15)]  # q_(i) = min_j>=i
    assert np.allclose(q, by_hand)
    assert q[0] == pytest.approx(0.0015) and q[3] == pytest.approx(0.0095 * 15 / 4)
    shuffled = np.random.default_rng(0).permutation(15)
    assert np.allclose(stats.bh_adjust(np.array(p)[shuffled]), q[shuffled])  # order does not matter
    with_nan = stats.bh_adjust([0.01, np.nan, 0.04])
    assert math.isnan(with_nan[1]) and with_nan[0] == pytest.approx(0.02) and with_nan[2] == pytest.approx(0.04)


def test_identical_models_give_significant_subjects_at_no_more_than_the_nominal_rate():
    # 57 subjects x 100 questions; both models answer each question right with the same probability,
    # independently. Per-subject McNemar then BH at 0.05: the family-wise share of runs with any
    # discovery (under the global null FDR = FWER) must not exceed 0.05, and the raw p < 0.05 rate
    # (exact McNemar is conservative) must not exceed 5%, up to Monte Carlo error.
    rng = np.random.default_rng(7)
    runs, any_discovery, raw_hits, tests = 200, 0, 0, 0
    for _ in range(runs):
        acc = rng.uniform(0.3, 0.8, size=57)
        x = rng.random((57, 100)) < acc[:, None]
        y = rng.random((57, 100)) < acc[:, None]
        p = np.array([stats.mcnemar_exact(*stats.discordant(x[k], y[k])) for k in range(57)])
        any_discovery += bool((stats.bh_adjust(p) <= 0.05).any())
        raw_hits += int((p < 0.05).sum())
        tests += 57
    assert any_discovery / runs <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)
    assert raw_hits / tests <= 0.05


def test_power_calculation_by_hand():
    # Connor (1987): psi 0.2, delta 0.05, alpha 0.05, power 0.8:
    # (1.95996 sqrt(0.2) + 0.84162 sqrt(0.1975))^2 / 0.0025 = 625.5 -> 626
    assert stats.questions_for_change(0.05, 0.20) == 626
    # unpaired, accuracy 0.5: (1.95996 sqrt(0.5) + 0.84162 sqrt(0.49875))^2 / 0.0025 = 1568.6 -> 1569
    assert questions_for_change_unpaired(0.05, 0.5) == 1569
    # why the analysis pairs: the same change on the same questions needs ~2.5x fewer of them
    assert stats.questions_for_change(0.05, 0.20) < questions_for_change_unpaired(0.05, 0.5) / 2
    with pytest.raises(ValueError):
        stats.questions_for_change(0.05, 0.01)  # a change larger than the disagreement is impossible


def test_monte_carlo_of_several_subjects_draws_each_subjects_binomial(monkeypatch):
    # three subjects of 30 discordant questions: the exact p is countable; the Monte Carlo path (one
    # Binomial(30, 1/2) per subject, by its inverse CDF) must find it within its own error
    groups = [
        np.array([1.0] * 19 + [-1.0] * 11),
        np.array([1.0] * 17 + [-1.0] * 13),
        np.array([1.0] * 20 + [-1.0] * 10),
    ]
    exact = stats.sign_flip_groups(groups).p
    monkeypatch.setattr(stats, "EXACT_STATES", 0)
    mc = stats.sign_flip_test(np.concatenate(groups), np.full(90, 1 / 90), n_perm=200_000, alpha=0.5)
    assert not mc.exact and mc.n == 200_000 and abs(mc.p - exact) < 4.5 * mc.mc_error
