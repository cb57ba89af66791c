"""The demo's table and collapse-curve figure, from the analysis package's one detector and one final AP,
so `collapse demo`, `collapse report` and `analysis.collapse_table` can never disagree on the same runs."""
import matplotlib.pyplot as plt
import pandas as pd

from collapse.data.coco import DataError


from .detector import collapse_curves, collapse_table, final_ap
from .figures import save
from .results import load, method_order


def demo_table(results_dir, names):
    """One row per run named in `names` (run folders under results_dir, one seed): final AP, its change vs
    supervised, the unlabeled peak response vs supervised at the end, and the collapse detector's verdict
    and step (analysis.collapse_table); two-net runs add a row for the ensemble of their nets (AP/ens)."""
    runs, metrics, probes = load(results_dir)
    runs = runs[runs.run.isin(list(names))]
    t = collapse_table(runs, probes, metrics)
    if "supervised" not in set(t.label):
        raise DataError("the supervised run did not finish, so there is no reference for the table")
    t = t.set_index("label").loc[sorted(t.label, key=method_order)]
    rows = t[["AP", "vs_supervised", "collapsed", "collapse_step"]].rename(columns={"vs_supervised": "response_vs_sup"})
    rows = rows.astype({"collapsed": object, "collapse_step": object})  # the ensemble rows leave them blank
    ens = final_ap(runs, metrics, "AP/ens")
    for run, ap in zip(runs.run, ens):
        if pd.notna(ap):  # the two nets' averaged heatmaps, as the paper's code evaluates (net 0 is the run's row)
            label = t.index[t.run == run][0]
            rows.loc[f"{label} (ensemble)"] = dict(AP=ap, response_vs_sup=float("nan"), collapsed="",
                                                   collapse_step="")
    rows = rows.loc[sorted(rows.index, key=method_order)]
    rows.insert(1, "dAP", rows.AP - rows.loc["supervised", "AP"])
    rows.index.name = "method"
    return rows


def demo_figure(results_dir, names, path_stem):
    """Collapse curves: unlabeled mean peak response and AP vs step, one line per run (PNG + PDF)."""
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "collapse"})
    runs, metrics, probes = load(results_dir)
    runs = runs[runs.run.isin(list(names))]
    curves = collapse_curves(runs, probes)
    val = metrics[(metrics.split == "val") & metrics.name.isin(["AP", "AP/net0"]) & metrics.run.isin(runs.run)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run, label in sorted(zip(runs.run, runs.label), key=lambda r: method_order(r[1])):
        style = dict(label=label, ls="--" if label == "supervised" else "-")
        c = curves[curves.run == run].sort_values("step")
        axes[0].plot(c.step, c.response, **style)
        a = val[val.run == run].sort_values("step")
        axes[1].plot(a.step, a.value, marker="o", ms=3, **style)
    for ax, what in zip(axes, ("unlabeled max response", "val AP")):
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].set_title("heatmap peak response on unlabeled crops")
    axes[1].set_title("validation OKS AP")
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return save(fig, path_stem)  # no dates, no software version: a rerun gives the same bytes
