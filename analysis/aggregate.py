"""Across settings, as rliable reads a benchmark (Agarwal et al., NeurIPS 2021): per method the interquartile
mean (IQM) of final AP over every run of every setting, and the probability that one method's run beats
another's, each with a 95% stratified bootstrap interval (runs resampled within their setting, so every
setting keeps its weight).

    analysis.aggregate("results/study")                          # IQM per label
    analysis.aggregate.probability_of_improvement(table, "dual", "easy_hard")
"""
import numpy as np
import pandas as pd
from scipy import stats

from .results import load
from .verdicts import run_table


def iqm(values):
    """The mean of the middle half (25% trimmed from each end)."""
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def _strata(table, label):
    return [g.AP.dropna().values for _, g in table[table.label == label].groupby("setting") if g.AP.notna().any()]


def _bootstrap(statistic, strata_sets, n_boot, seed, level):
    """Percentile interval of statistic(*resampled) with each stratum of each set resampled on its own."""
    rng = np.random.default_rng(seed)
    draws = [statistic(*[[s[rng.integers(0, len(s), len(s))] for s in strata] for strata in strata_sets])
             for _ in range(n_boot)]
    return tuple(float(q) for q in np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))


def iqm_table(table, n_boot=2000, seed=0, level=0.95):
    """label, runs, settings, IQM of AP x 100 and its stratified bootstrap interval."""
    rows = []
    for label in sorted(table.label.unique()):
        strata = _strata(table, label)
        if not strata:
            continue
        stat = lambda ss: 100 * iqm(np.concatenate(ss))
        lo, hi = _bootstrap(stat, [strata], n_boot, seed, level)
        rows.append(dict(label=label, runs=sum(len(s) for s in strata), settings=len(strata),
                         IQM=stat(strata), low=lo, high=hi))
    return pd.DataFrame(rows, columns=["label", "runs", "settings", "IQM", "low", "high"])


def probability_of_improvement(table, a, b, n_boot=2000, seed=0, level=0.95):
    """P(a run of `a` ends above a run of `b` in the same setting), ties counting half, averaged over the
    settings both ran (Mann-Whitney's U / (n m) per setting) -> (probability, low, high, settings)."""
    both = sorted(set(table[table.label == a].setting) & set(table[table.label == b].setting))
    A = [table[(table.label == a) & (table.setting == s)].AP.dropna().values for s in both]
    B = [table[(table.label == b) & (table.setting == s)].AP.dropna().values for s in both]
    keep = [i for i in range(len(both)) if len(A[i]) and len(B[i])]
    A, B = [A[i] for i in keep], [B[i] for i in keep]
    if not keep:
        return np.nan, np.nan, np.nan, 0

    def prob(As, Bs):
        return float(np.mean([((x[:, None] > y[None]) + 0.5 * (x[:, None] == y[None])).mean() for x, y in zip(As, Bs)]))
    lo, hi = _bootstrap(prob, [A, B], n_boot, seed, level)
    return prob(A, B), lo, hi, len(keep)


def aggregate(results_dir, **kwargs):
    """The IQM table of a results folder's finished runs (collapse's own methods)."""
    from collapse.methods import METHODS
    runs, metrics, probes = load(results_dir)
    return iqm_table(run_table(runs[runs.method.isin(list(METHODS))], metrics, probes), **kwargs)
