"""Reading results folders into tidy pandas DataFrames. Works on runs in progress and failed runs too."""
import hashlib
import json
import os

import pandas as pd
import yaml

from collapse.errors import UserError
from collapse.evaluate import ERROR_KINDS, part_shares  # ERROR_KINDS: re-exported for the figures
from collapse.grid import WARM_START
from collapse.identity import flatten as _flatten, with_defaults  # noqa: F401  (re-exported)
from collapse.methods import METHODS
from collapse.probes import PROBE_COLUMNS


def _read_parquet(path, columns):
    """A parquet table, or an empty one with the given columns if the run has not written it yet."""
    return pd.read_parquet(path) if os.path.exists(path) else pd.DataFrame(columns=columns)


class NotResults(UserError):
    """The folder holds no run folders (no manifest.json below it)."""


def run_folders(results_dir, stages=False):
    """Every run folder (one holding manifest.json) at or below results_dir, sorted; a grid's supervised
    stages (its warm_start/ folder: runs other runs start from) only with stages=True."""
    if not os.path.isdir(results_dir):
        raise NotResults(f"results folder not found: {results_dir}")
    found = []
    for dirpath, dirnames, filenames in os.walk(results_dir):
        dirnames[:] = sorted(d for d in dirnames if stages or d != WARM_START)
        if "manifest.json" in filenames:
            found.append(dirpath)
            dirnames[:] = []
    return sorted(found)


def load(results_dir, stages=False):
    """(runs, metrics, probes) for every run folder under results_dir.

    runs:    one row per run: run (path relative to results_dir), path, status, run_id, method,
             label (method plus what distinguishes it: ema, tau, pair...), final.* metrics, and the
             resolved config flattened to dotted columns (data.labeled, method.unsup_weight, ...);
    metrics: step, split, name, value, run   (from each run's metrics.parquet)
    probes:  step, split, net, joint, name, param, value, run   (from probes.parquet)
    """
    runs, metrics, probes = [], [], []
    for path in run_folders(results_dir, stages):
        try:
            with open(os.path.join(path, "manifest.json")) as f:
                m = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            m = dict(status="unreadable", reason=str(e))
        rel = os.path.relpath(path, results_dir)
        row = dict(run=rel, path=path, status=m.get("status"), run_id=m.get("run_id"), method=m.get("method"),
                   reason=m.get("reason"), collapse_step=m.get("collapse_step"), steps=m.get("steps"))
        row.update({f"final.{k}": v for k, v in (m.get("final") or {}).items()})
        row.update({f"timing.{k}": v for k, v in (m.get("timing") or {}).items()})
        cfg_path = os.path.join(path, "config.yaml")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                row.update(with_defaults(_flatten(yaml.safe_load(f) or {})))
            if row.get("method.name") in METHODS:
                row["train.init_stage"] = stage_key(row.get("train.init_from"), results_dir) or ""
        row["label"] = method_label(row)
        runs.append(row)
        metrics.append(_read_parquet(os.path.join(path, "metrics.parquet"), ["step", "split", "name", "value"])
                       .assign(run=rel))
        probes.append(_read_parquet(os.path.join(path, "probes.parquet"), PROBE_COLUMNS).assign(run=rel))
    if not runs:
        raise NotResults(f"no runs in {results_dir} (a run folder holds manifest.json)")
    return pd.DataFrame(runs), pd.concat(metrics, ignore_index=True), pd.concat(probes, ignore_index=True)


def stage_key(init_from, results_dir):
    """A short key of the settings of the supervised stage a run starts from (its seed left out), so two grids
    whose stages differ are two settings; None when the run starts from scratch or its stage is not found."""
    if not isinstance(init_from, str) or not init_from:
        return None
    keys = []
    for source in init_from.split(","):
        source = os.path.dirname(source) if source.endswith(".pt") else source
        here = os.path.join(results_dir, *os.path.normpath(source).split(os.sep)[-2:])  # a moved folder
        path = next((os.path.join(p, "config.yaml") for p in (source, here) if os.path.exists(os.path.join(p, "config.yaml"))), None)
        if path is None:
            return None
        with open(path) as f:
            cfg = with_defaults(_flatten(yaml.safe_load(f) or {}))
        cfg = {k: v for k, v in cfg.items() if k not in ("train.seed", "train.init_from", "data.split_seed")}
        keys.append(hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:8])
    return "+".join(sorted(set(keys)))


def method_label(row):
    """A readable name for a run's method variant: 'mean_teacher (ema 0.99)', 'dual + JC5 + RA'; each method
    names its own variants (Method.label); a two-net method whose nets start alike says so."""
    name = row.get("method.name", row.get("method")) or "?"
    if name not in METHODS:
        return name
    settings = {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith("method.") and _present(v)}
    label = METHODS[name].label({**settings, "name": name})
    if row.get("train.init_same") and METHODS[name].net_count(settings) > 1:
        label += " (one init)"
    return label


def _present(v):
    """A setting the run's config holds (NaN: a column from another run's method)."""
    return not (isinstance(v, float) and v != v)


def method_order(label):
    """Where a label sits in tables and figures: its method's place, then the label."""
    cls = METHODS.get(label.split(" ")[0])
    return (cls.order if cls else len(METHODS), label)



def joint_errors(results_dir, runs=None):
    """Each finished run's final per-joint errors (its joints.parquet: written by the final evaluation), with
    run, label and seed: joint, part, labeled, a share per kind (good, jitter, inversion, swap, miss),
    median_error_px, net, step. Runs without the file (older ones, PCKh-free monitors) are left out."""
    runs = load(results_dir)[0] if runs is None else runs
    frames = []
    for run, path, label, seed in zip(runs.run, runs.path, runs.label, runs.get("train.seed", pd.Series(0, index=runs.index))):
        f = os.path.join(path, "joints.parquet")
        if os.path.exists(f):
            frames.append(pd.read_parquet(f).assign(run=run, label=label, seed=seed))
    columns = ["joint", "part", "labeled", *ERROR_KINDS, "median_error_px", "net", "step", "run", "label", "seed"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def part_errors(joints, net=None):
    """Per run and body part, the shares of its labeled joints by error kind (weighted by how many persons label
    each joint), for net `net` (default: the run's first: 'net' or 'net0')."""
    if joints.empty:
        return pd.DataFrame(columns=["run", "label", "seed", "part", *ERROR_KINDS])
    first = joints.groupby("run").net.transform("min") if net is None else net
    return part_shares(joints[joints.net == first], by=["run", "label", "seed"])
