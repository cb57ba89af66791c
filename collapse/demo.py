"""The main job: the collapse study's methods on the embedded synthetic set, a table and a figure."""
import os

import numpy as np
import pandas as pd

from .grid import FINISHED, expand, run_grid
from .train import ensure_data

GRID = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "grids", "demo.yaml")
RELATIVE_COST = {"supervised": 1, "dual": 4, "consistency": 2.4}  # per step, others about 2
COLLAPSE_RATIO = 0.25  # unlabeled mean peak response below this share of supervised's = collapsed


def run_all(grid, out, seed, overrides=(), jobs=2, echo=print):
    """Run the demo grid (`jobs` processes at once, one CPU thread each) through the grid machinery;
    returns {method: run folder} of the runs that finished."""
    overrides = [*overrides, f"train.seed={seed}"]
    runs = expand(grid, out, overrides=overrides)
    ensure_data(runs[0].cfg)  # once, before the runs start in parallel
    states = run_grid(grid, out, jobs=jobs, threads=1, overrides=overrides, echo=echo,
                      order=lambda r: -RELATIVE_COST.get(r.cfg.method.name, 2))  # longest first: workers end together
    return {r.cfg.method.name: r.folder for r in runs if states[r.name] in FINISHED}


def _final_value(metrics, name):
    v = metrics[(metrics.split == "val") & metrics.name.isin([name, f"{name}/net0"])]
    return v[v.step == v.step.max()].value.iloc[0] if len(v) else np.nan


def summarise(folders):
    """Demo table: final AP, AP change vs supervised, unlabeled peak response vs supervised, collapsed."""
    if "supervised" not in folders:
        from .data.coco import DataError
        raise DataError("the supervised run failed, so there is no reference for the table")
    rows = []
    for name, folder in folders.items():
        m = pd.read_parquet(os.path.join(folder, "metrics.parquet"))
        p = pd.read_parquet(os.path.join(folder, "probes.parquet"))
        u = p[(p.split == "unlabeled") & (p.name == "max_response") & (p.joint == -1) & (p.net == 0)]
        response = u[u.step == u.step.max()].value.iloc[0]
        rows.append(dict(method=name, AP=_final_value(m, "AP"), response=response))
        ens = m[(m.split == "val") & (m.name == "AP/ens")]
        if len(ens):  # the two nets' averaged heatmaps, as the paper's code also evaluates (net 0 is the row above)
            rows.append(dict(method=f"{name} (ensemble)", AP=ens[ens.step == ens.step.max()].value.iloc[0],
                             response=response))
    t = pd.DataFrame(rows).set_index("method")
    sup = t.loc["supervised"]
    t["dAP"] = t.AP - sup.AP
    t["response_vs_sup"] = t.response / sup.response
    t["collapsed"] = t.response_vs_sup < COLLAPSE_RATIO
    return t[["AP", "dAP", "response_vs_sup", "collapsed"]]


def curves(folders):
    frames = []
    for name, folder in folders.items():
        p = pd.read_parquet(os.path.join(folder, "probes.parquet"))
        u = p[(p.split == "unlabeled") & (p.name == "max_response") & (p.joint == -1) & (p.net == 0)]
        m = pd.read_parquet(os.path.join(folder, "metrics.parquet"))
        a = m[(m.split == "val") & m.name.isin(["AP", "AP/net0"])]
        frames += [u.assign(method=name, what="unlabeled max response")[["step", "value", "method", "what"]],
                   a.assign(method=name, what="val AP")[["step", "value", "method", "what"]]]
    return pd.concat(frames, ignore_index=True)


def figure(folders, path_stem):
    """Collapse curves: unlabeled mean peak response and AP vs step, one line per method (PNG + PDF)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "collapse"})
    data = curves(folders)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, what in zip(axes, ("unlabeled max response", "val AP")):
        for name in folders:
            d = data[(data.method == name) & (data.what == what)].sort_values("step")
            ax.plot(d.step, d.value, marker="o" if what == "val AP" else None, ms=3, label=name,
                    ls="--" if name == "supervised" else "-")
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].set_title("heatmap peak response on unlabeled crops")
    axes[1].set_title("validation OKS AP")
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    from .runs import atomic_write_bytes_from
    for ext in ("png", "pdf"):
        atomic_write_bytes_from(f"{path_stem}.{ext}", lambda f, ext=ext: fig.savefig(
            f, format=ext, dpi=150, metadata={"CreationDate": None} if ext == "pdf" else None))
    plt.close(fig)
