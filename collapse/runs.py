"""Run identity, run folders, manifests and atomic writes.

Every file a run leaves is written to a temporary name in the same folder and renamed into place, so a
reader (or a killed writer) never sees a half-written file.
"""
import functools
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy
import torch
import yaml

from .identity import run_id  # noqa: F401  (re-exported: a run's identity is collapse/identity.py's)


def _atomic_write_bytes(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes_from(path, write):
    """Atomically write what `write(file_object)` writes (e.g. a matplotlib savefig)."""
    buf = io.BytesIO()
    write(buf)
    _atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path, text):
    _atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def atomic_write_parquet(path, frame):
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    _atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path, obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, buf.getvalue())


FINISHED = ("done", "collapsed")  # a run's final statuses (a collapsed run stopped on train.stop_on_collapse)


def collapsed_end(step):
    """The manifest's end of a run stopped by train.stop_on_collapse."""
    return dict(status="collapsed", collapse_step=step, reason=(
        f"collapsed since step {step}: its unlabeled response or pseudo-label quality and its pseudo-label "
        "quantity or AP fell together (collapse.detector.detect)"))


def timing_account(timing, steps, data_clock):
    """The manifest's timing: the clocks' seconds, and the data path's share of training, the probes' share of
    the run, and seconds per training step (training = total - evaluation - probes)."""
    train_time = timing["total"] - timing["eval"] - timing["probe"]
    return dict(timing, data_clock=data_clock, data_share=timing["data"] / max(train_time, 1e-9),
                probe_share=timing["probe"] / max(timing["total"], 1e-9), seconds_per_step=train_time / max(steps, 1))



def final_value(final, name="AP"):
    """A run's final `name` from its last evaluation ({metric: value}); for two-net runs net 0's, the
    model-selection net (the ensemble is AP/ens). The one rule every table and summary uses. A run scored
    by PCKh (eval.metric pckh) has no AP: its PCKh@0.5 stands in (the tables' AP column holds it)."""
    names = [name, name.replace("AP", "PCKh@0.5", 1)] if name.split("/")[0] == "AP" else [name]
    for n in names:
        value = final.get(n, final.get(f"{n}/net0"))
        if value is not None:
            return value
    return None


@functools.lru_cache(maxsize=1)
def code_version():
    """Which code made a run: a hash of the package's own source files (collapse/**/*.py, names and bytes:
    the same on any copy of one tree), and, where the package sits in a git work tree, its commit and
    whether tracked files differ from it."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha1()
    for base, _, files in sorted(os.walk(root)):  # every folder listed, then in name order
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(base, f)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as fh:
                    h.update(fh.read())
    out = dict(source_sha1=h.hexdigest())
    try:
        git = lambda *a: subprocess.run(["git", "-C", os.path.dirname(root), *a], capture_output=True, text=True,
                                        timeout=10)
        commit = git("rev-parse", "HEAD")
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            out["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git on this host: the source hash stands alone
        pass
    return out


def versions():
    return dict(python=platform.python_version(), torch=torch.__version__, numpy=numpy.__version__,
                platform=platform.platform(), argv=" ".join(sys.argv), code=code_version())


class RunDir:
    """A run's folder: config.yaml, manifest.json, metrics.parquet, probes.parquet, predictions/, checkpoints."""

    def __init__(self, path):
        self.path = path  # created by the first write, never by reading

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def manifest(self):
        try:
            with open(self.file("manifest.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def update_manifest(self, **fields):
        m = self.manifest()
        m.update(fields)
        m["updated"] = time.time()
        atomic_write_json(self.file("manifest.json"), m)
        return m

    def start(self, resolved, **fields):
        """config.yaml and a manifest marked running: the run's id, method, code version and `fields`."""
        self.write_config(resolved)
        self.update_manifest(status="running", run_id=run_id(resolved), method=resolved["method"]["name"],
                             versions=versions(), started=time.time(), **fields)

    def write_npz(self, name, arrays):
        atomic_write_bytes_from(self.file(name), lambda f: numpy.savez(f, **arrays))

    def write_tables(self, metrics, probes, probe_columns):
        """metrics.parquet and probes.parquet from their rows, each written atomically."""
        import pandas as pd
        atomic_write_parquet(self.file("metrics.parquet"), pd.DataFrame(metrics, columns=["step", "split", "name", "value"]))
        atomic_write_parquet(self.file("probes.parquet"), pd.DataFrame(probes, columns=probe_columns))

    def write_config(self, resolved):
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(resolved, sort_keys=False))
