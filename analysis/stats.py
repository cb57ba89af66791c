"""Paired differences over seeds with a 95% interval, and the verdict they allow.

Runs are compared only paired by seed (same setting, same seed, different method), so seed-to-seed
variation of the setting itself cancels. With fewer than 10 pairs the interval is Student's t on the
differences (a bootstrap over 3-5 values cannot reach the tails); from 10 pairs on, a seeded percentile
bootstrap (no normality assumption). A verdict needs at least MIN_SEEDS pairs and an interval that
excludes zero."""
import numpy as np
from scipy import stats

MIN_SEEDS = 3
BOOTSTRAP_FROM = 10


def paired_interval(diffs, level=0.95, n_boot=10_000, seed=0):
    """(mean, low, high, n, how) of paired differences; how is 't' or 'bootstrap' (NaN bounds for n < 2)."""
    d = np.asarray([x for x in diffs if np.isfinite(x)], dtype=float)
    n = len(d)
    if n == 0:
        return np.nan, np.nan, np.nan, 0, "none"
    mean = float(d.mean())
    if n < 2:
        return mean, np.nan, np.nan, n, "t"
    if n < BOOTSTRAP_FROM:
        half = stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
        return mean, mean - half, mean + half, n, "t"
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return mean, float(lo), float(hi), n, "bootstrap"


def verdict(low, high, n, direction=1):
    """holds / fails / inconclusive for the claim 'the difference has the sign of `direction`'."""
    if n < MIN_SEEDS or not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    lo, hi = sorted((direction * low, direction * high))
    if lo > 0:
        return "holds"
    if hi < 0:
        return "fails"
    return "inconclusive"
