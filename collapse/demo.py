"""The main job: the collapse study's methods on the embedded synthetic set, a table and a figure."""
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from . import config
from .train import ensure_data

DEMO_METHODS = (
    ("supervised", []),
    ("consistency", []),
    ("mean_teacher", ["method.ema=0.99"]),
    ("threshold", ["method.tau=0.6"]),
    ("reweight", []),
    ("easy_hard", ["method.pair=easy_hard"]),
    ("dual", []),
)
RELATIVE_COST = {"supervised": 1, "dual": 4, "consistency": 2.4}  # per step, others about 2
COLLAPSE_RATIO = 0.25  # unlabeled mean peak response below this share of supervised's = collapsed


def _launch(cfg_path, name, extra, seed, out, overrides):
    args = [sys.executable, "-m", "collapse", "train", cfg_path, f"method.name={name}", *extra,
            f"train.seed={seed}", "train.threads=1", "train.progress=false", *overrides, "--out", out, "--quiet"]
    log = open(out + ".log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def run_all(cfg_path, out, seed, overrides=(), jobs=2, echo=print):
    """Run every demo method (`jobs` processes at once, one CPU thread each); returns {method: folder}."""
    cfg = config.load(cfg_path, list(overrides))
    ensure_data(cfg)  # once, before the runs start in parallel
    os.makedirs(out, exist_ok=True)
    # longest runs first, so the two workers finish together
    order = sorted(DEMO_METHODS, key=lambda m: -RELATIVE_COST.get(m[0], 2))
    pending = [(n, e, os.path.join(out, n)) for n, e in order]
    running, folders, t0 = [], {}, time.time()
    while pending or running:
        while pending and len(running) < jobs:
            name, extra, folder = pending.pop(0)
            running.append((name, folder, _launch(cfg_path, name, extra, seed, folder, overrides)))
        time.sleep(0.5)
        for item in list(running):
            name, folder, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode == 0:
                    folders[name] = folder
                status = "done" if proc.returncode == 0 else f"failed (see {folder}.log)"
                echo(f"  {name:<13} {status}  [{time.time() - t0:5.0f}s]")
    return {n: folders[n] for n, _ in DEMO_METHODS if n in folders}


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
        rows.append(dict(method=name, AP=_final_value(m, "AP"), response=u[u.step == u.step.max()].value.iloc[0]))
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
