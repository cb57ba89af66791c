"""Collapse curves, the collapse index, and the detector over results folders.

The detector is collapse.detector.detect (shared with the trainer's `train.stop_on_collapse` and the monitor
for other trainers): two signals must agree, each below FADE_RATIO of its own running peak for
COLLAPSE_PATIENCE consecutive probes: (1) the unlabeled response or its pseudo-labels' quality, and (2) its
pseudo-labels' quantity or the run's AP. It needs nothing but the run. A second trigger compares with the
supervised run of the same setting (same config apart from method.*) at the same step: the response below
REFERENCE_RATIO of supervised's together with the pseudo-label quantity below FADE_RATIO of supervised's
(for a run that never rose). Without a supervised run in the folder that trigger is unavailable, and the
table says so. A run's collapse step is the earlier of the two (None if neither fires).
"""
import os

import pandas as pd

from collapse.identity import NOT_SETTINGS
from collapse.runs import final_value
import numpy as np

from collapse.detector import (COLLAPSE_FLOOR, COLLAPSE_PATIENCE, COLLAPSE_RATIO, FADE_RATIO, QUANTITY_TAU,
                               collapse_index, detect, first_streak)

REFERENCE_RATIO = 0.25  # collapsed vs supervised: below a quarter of its response (the demo's criterion)

def setting_columns(runs, across_seeds=False, without=()):
    """The config columns that make a setting (keys every run has: runs of older versions may lack new ones)."""
    skip = set(NOT_SETTINGS) | set(without) | ({"train.seed"} if across_seeds else set())
    return sorted(c for c in runs.columns if "." in c and c.split(".")[0] in ("data", "augment", "model", "train", "eval")
                  and c not in skip and runs[c].notna().all())


def setting_key(runs, across_seeds=False, without=()):
    """Per run, a key for 'the same setting apart from the method' (to find its supervised reference);
    across_seeds: also apart from the seed (to pair runs by seed), `without`: apart from these columns too."""
    cols = setting_columns(runs, across_seeds, without)
    if not cols:
        return pd.Series("", index=runs.index)
    key = runs[cols].astype(str)
    if "train.init_from" in key:
        # a two-net run names a source per net: net 0's is the one it shares; across seeds (each seed has
        # its own supervised stage) only whether the run was warm-started and from which folder of stages
        first = key["train.init_from"].str.split(",").str[0]
        key["train.init_from"] = first.map(lambda p: os.path.dirname(p)) if across_seeds else first
    return key.agg("|".join, axis=1)


def unlabeled_response(probes, net=0):
    """run, step, response: the unlabeled mean (over crops and joints) max response of net `net`."""
    p = probes[(probes.split == "unlabeled") & (probes.name == "max_response") & (probes.joint == -1)
               & (probes.net == net)]
    return p[["run", "step", "value"]].rename(columns={"value": "response"}).sort_values(["run", "step"])


def collapse_curves(runs, probes, net=0):
    """run, label, seed, step, response, index (vs own peak), vs_supervised (vs the same setting's
    supervised run at the same step, NaN without one)."""
    r = unlabeled_response(probes, net).merge(
        runs[["run", "label", "method"]].assign(seed=runs.get("train.seed"), key=setting_key(runs)), on="run")
    r["index"] = r.groupby("run", group_keys=False).response.apply(lambda v: pd.Series(collapse_index(v.values)[0], v.index))
    sup = r[r.method == "supervised"][["key", "step", "response"]].groupby(["key", "step"]).response.mean()
    r["reference"] = pd.Series(list(zip(r.key, r.step)), index=r.index).map(sup)
    r["vs_supervised"] = r.response / r.reference
    return r.drop(columns=["key"])


def final_ap(runs, metrics, which="AP"):
    """run -> the validation `which` at the run's last evaluation, by collapse.runs.final_value (net 0 for
    two-net methods, the paper's model selection; which="AP/ens" for their ensemble)."""
    val = metrics[metrics.split == "val"]
    last = val[val.step == val.groupby("run").step.transform("max")]
    finals = {run: final_value(dict(zip(g.name, g.value)), which) for run, g in last.groupby("run")}
    return runs.run.map(finals).astype(float)


def _series(probes, name, param):
    p = probes[(probes.split == "unlabeled") & (probes.net == 0) & (probes.joint == -1) & (probes.name == name)
               & (probes.param == param)]
    return p.set_index(["run", "step"]).value


def collapse_table(runs, probes, metrics=None, ratio=COLLAPSE_RATIO, patience=COLLAPSE_PATIENCE):
    """One row per run: label, seed, status, final and peak response, final index, vs_supervised at the
    end, the detected collapse step (None if none), collapsed yes/no, which trigger fired (`trigger`: own,
    vs supervised) and `note` (a trigger that was unavailable), and final AP with metrics."""
    curves = collapse_curves(runs, probes)
    quantity, quality = _series(probes, "pl_quantity", QUANTITY_TAU), _series(probes, "pl_quality", QUANTITY_TAU)
    curves = curves.assign(quantity=[quantity.get((r, s), np.nan) for r, s in zip(curves.run, curves.step)],
                           quality=[quality.get((r, s), np.nan) for r, s in zip(curves.run, curves.step)])
    keys = _keys(runs)
    sup_q = curves[curves.method == "supervised"].assign(key=lambda c: c.run.map(keys)) \
        .groupby(["key", "step"]).quantity.mean()
    ap = _ap_by_step(runs, metrics, curves) if metrics is not None else None
    rows = []
    for run, c in curves.groupby("run", sort=True):
        c = c.sort_values("step")
        steps = c.step.values
        own, _ = detect(steps, c.response.values, c.quantity.values, c.quality.values,
                        None if ap is None else ap.get(run), ratio, patience)
        ref_q = np.array([sup_q.get((keys[run], s), np.nan) for s in steps])
        low = (c.vs_supervised < REFERENCE_RATIO).values & (c.reference > COLLAPSE_FLOOR).values
        if np.isfinite(ref_q).any() and np.isfinite(c.quantity.values).any():
            with np.errstate(invalid="ignore", divide="ignore"):
                low &= np.nan_to_num(c.quantity.values / ref_q < FADE_RATIO, nan=False).astype(bool)
        ref = first_streak(steps, low, patience)
        step = min((s for s in (own, ref) if s is not None), default=None)
        trigger = ", ".join(n for n, s in (("own", own), ("vs supervised", ref)) if s is not None and s == step)
        note = "" if c.reference.notna().any() else "no supervised run of this setting: vs-supervised trigger unavailable"
        rows.append(dict(run=run, label=c.label.iloc[0], seed=c.seed.iloc[0], final_step=int(steps[-1]),
                         response=c.response.iloc[-1], peak=c.response.max(), index=c["index"].iloc[-1],
                         vs_supervised=c.vs_supervised.iloc[-1], collapse_step=step, collapsed=step is not None,
                         trigger=trigger, note=note))
    t = pd.DataFrame(rows)
    if len(t):
        t = t.merge(runs[["run", "status"]], on="run", how="left")
        if metrics is not None:
            t["AP"] = final_ap(runs.set_index("run").loc[t.run].reset_index(), metrics).values
    return t


def _keys(runs):
    return dict(zip(runs.run, setting_key(runs)))


def _ap_by_step(runs, metrics, curves):
    """run -> its net-0 validation AP at each probe step (the last evaluation at or before it)."""
    val = metrics[(metrics.split == "val") & metrics.name.isin(["AP", "AP/net0"])]
    out = {}
    for run, c in curves.groupby("run"):
        v = val[val.run == run].sort_values("step")
        if len(v):
            out[run] = [v.value[v.step <= s].iloc[-1] if (v.step <= s).any() else np.nan for s in sorted(c.step)]
    return out


def mean_over_seeds(frame, value, by=("label", "step")):
    """Mean and std over seeds of `value`, per (label, step) or any grouping."""
    g = frame.groupby(list(by))[value]
    return g.mean().rename("mean").to_frame().join(g.std().fillna(0).rename("std")).reset_index()
