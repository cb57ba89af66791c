"""Reads results folders and never trains (except the 2-D toy study, which reuses collapse.methods).

    runs, metrics, probes = analysis.load("results/demo")
    analysis.collapse_table(runs, probes)          # collapse index, detected step, per run
    analysis.boundary_drift(runs, probes)          # fg/bg boundary at each tau around the joints
    analysis.write_figures("results/demo", "figures/")
    analysis.claims("results/demo")                # the paper's claims: paired effects, 95% intervals, verdicts
    analysis.aggregate("results/study")            # across settings: IQM of AP, stratified bootstrap intervals
    analysis.part_errors(analysis.joint_errors("results/demo"))  # which joints carry the score: error kinds per part

Names and submodules load when first used (PEP 562): `collapse` reads analysis/cli.py at every start to
build its command line, and pandas, matplotlib and scipy would add seconds to each `collapse` process.
"""
import importlib

_EXPORTS = {"load": "results", "run_folders": "results", "NotResults": "results", "collapse_curves": "detector",
            "collapse_table": "detector", "final_ap": "detector", "boundary_drift": "drift",
            "response_histograms": "drift", "write_figures": "figures", "report": "tables", "claims": "verdicts",
            "aggregate": "aggregate", "joint_errors": "results", "part_errors": "results"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    try:  # a submodule: analysis.figures, analysis.toy ...
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module 'analysis' has no attribute '{name}'") from None


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
