"""Response distributions and the heatmap's fg/bg decision boundary around ground-truth joints, over steps.

From the probes (collapse/probes.py): `fg_area` (share of heatmap pixels above tau) and `gt_bg_share`
(share of ground-truth joint pixels, target > 0.5, predicted below tau: joints called background).
The foreground's equivalent radius per joint heatmap, sqrt(fg_area * H * W / pi) in heatmap pixels, is
compared with the target's own radius at tau, sigma * sqrt(2 ln(1/tau)): a boundary moving into the minor
(joint) class shows as a shrinking radius and a growing gt_bg_share.
"""
import numpy as np
import pandas as pd


def target_radius(sigma, tau):
    """Radius (heatmap pixels) at which a unit Gaussian target of std sigma falls to tau."""
    return sigma * np.sqrt(2 * np.log(1 / np.asarray(tau, dtype=float)))


def boundary_drift(runs, probes, split="unlabeled", net=0):
    """run, label, seed, step, tau, fg_area, gt_bg_share, radius, target_radius."""
    p = probes[(probes.split == split) & (probes.net == net) & probes.name.isin(["fg_area", "gt_bg_share"])]
    wide = p.pivot_table(index=["run", "step", "param"], columns="name", values="value").reset_index()
    wide = wide.rename(columns={"param": "tau"})
    info = runs[["run", "label"]].assign(seed=runs.get("train.seed"))
    hw = runs["data.input_size"].map(_hw) if "data.input_size" in runs else pd.Series([(64, 48)] * len(runs))
    stride = runs.get("data.heatmap_stride", pd.Series(2, index=runs.index)).astype(float)
    info["pixels"] = [h * w / s ** 2 for (h, w), s in zip(hw, stride)]
    info["sigma"] = runs.get("data.sigma", pd.Series(np.nan, index=runs.index)).astype(float)
    d = wide.merge(info, on="run")
    d["radius"] = np.sqrt(d.fg_area * d.pixels / np.pi)
    d["target_radius"] = target_radius(d.sigma, d.tau)
    return d.drop(columns="pixels")


def _hw(v):
    return int(v[0]), int(v[1])


def response_histograms(runs, probes, split="unlabeled", net=0):
    """run, label, seed, step, edge (bin lower edge), share: the pixel-response histogram per probe."""
    p = probes[(probes.split == split) & (probes.net == net) & (probes.name == "hist")]
    p = p.rename(columns={"param": "edge", "value": "share"})[["run", "step", "edge", "share"]]
    return p.merge(runs[["run", "label"]].assign(seed=runs.get("train.seed")), on="run")
