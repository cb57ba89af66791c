"""Reads results folders and never trains (except the 2-D toy study, which reuses collapse.methods).

    runs, metrics, probes = analysis.load("results/demo")
    analysis.collapse_table(runs, probes)          # collapse index, detected step, per run
    analysis.boundary_drift(runs, probes)          # fg/bg boundary at each tau around the joints
    analysis.write_figures("results/demo", "figures/")
    analysis.claims("results/demo")                # the paper's claims: paired effects, 95% intervals, verdicts
"""
from .claims import claims
from .detector import collapse_curves, collapse_table, final_ap
from .drift import boundary_drift, response_histograms
from .figures import write_figures
from .results import NotResults, load, run_folders
from .tables import report

__all__ = ["load", "run_folders", "NotResults", "collapse_curves", "collapse_table", "final_ap",
           "boundary_drift", "response_histograms", "write_figures", "report", "claims"]

