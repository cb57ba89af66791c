"""Reads results folders and never trains (except the 2-D toy study, which reuses collapse.methods).

    runs, metrics, probes = analysis.load("results/demo")
    analysis.collapse_table(runs, probes)          # collapse index, detected step, per run
    analysis.boundary_drift(runs, probes)          # fg/bg boundary at each tau around the joints
    analysis.write_figures("results/demo", "figures/")
    analysis.claims("results/demo")                # the paper's claims: paired effects, 95% intervals, verdicts
"""
from .detector import collapse_curves, collapse_table, final_ap
from .drift import boundary_drift, response_histograms
from .results import NotResults, load, run_folders

__all__ = ["load", "run_folders", "NotResults", "collapse_curves", "collapse_table", "final_ap",
           "boundary_drift", "response_histograms", "write_figures", "report", "claims"]


def write_figures(results_dir, out_dir):
    from .figures import write_figures as _w
    return _w(results_dir, out_dir)


def claims(results_dir):
    """The paper's claims as verdicts over a results folder (see analysis/claims.py)."""
    from .claims import claims as _c
    return _c(results_dir)


def report(results_dir, out_dir=None):
    from .tables import report as _r
    return _r(results_dir, out_dir)
