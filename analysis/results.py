import json
import os

import pandas as pd
import yaml


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if not isinstance(v, list) else str(v)
    return out


def load(results_dir):
    """(runs, metrics) for every run folder under results_dir, including runs in progress or failed.

    runs: one row per run with its manifest fields and flattened config columns;
    metrics: the runs' metrics.parquet rows (step, split, name, value) with a `run` column.
    """
    runs, metrics = [], []
    for dirpath, dirnames, filenames in sorted(os.walk(results_dir)):
        if "manifest.json" not in filenames:
            continue
        dirnames[:] = []
        with open(os.path.join(dirpath, "manifest.json")) as f:
            m = json.load(f)
        row = dict(run=os.path.relpath(dirpath, results_dir), path=dirpath, status=m.get("status"),
                   run_id=m.get("run_id"), method=m.get("method"))
        row.update({f"final.{k}": v for k, v in (m.get("final") or {}).items()})
        cfg_path = os.path.join(dirpath, "config.yaml")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                row.update(_flatten(yaml.safe_load(f) or {}))
        runs.append(row)
        mp = os.path.join(dirpath, "metrics.parquet")
        if os.path.exists(mp):
            metrics.append(pd.read_parquet(mp).assign(run=row["run"]))
    runs = pd.DataFrame(runs)
    metrics = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(
        columns=["step", "split", "name", "value", "run"])
    return runs, metrics
