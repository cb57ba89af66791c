import glob
import json

import yaml
import os
import subprocess
import sys

import pandas as pd

from collapse.cli import main


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "collapse", *args], capture_output=True, text=True)


def test_train_writes_the_run_folder_contract(synth_root, tmp_path):
    out = str(tmp_path / "run")
    rc = main(["train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=dual", "model.width=8",
               "train.steps=6", "train.eval_every=3", "train.log_every=3", "train.probe_every=3",
               "train.device=cpu", "--out", out, "--quiet"])
    assert rc == 0
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["status"] == "done" and len(m["run_id"]) == 10 and m["versions"]["torch"]
    from collapse.runs import code_version
    code = m["versions"]["code"]  # which code made the run: the package's source hash (and git, where there is one)
    assert len(code["source_sha1"]) == 40 and code == code_version()
    metrics = pd.read_parquet(os.path.join(out, "metrics.parquet"))
    assert list(metrics.columns) == ["step", "split", "name", "value"]
    assert {"AP/net0", "AP/net1", "AP/ens", "PCK@0.1/net0", "loss/sup0", "loss/unsup1"} <= set(metrics.name)
    assert sorted(metrics[metrics.name == "AP/net0"].step) == [3, 6]
    probes = pd.read_parquet(os.path.join(out, "probes.parquet"))
    assert {"max_response", "hist", "fg_area", "gt_bg_share", "agree_mse"} <= set(probes.name)
    assert set(probes.split) == {"unlabeled", "val"} and set(probes.step) == {0, 3, 6}
    preds = json.load(open(os.path.join(out, "predictions", "step0000006_net0.json")))
    assert len(preds) > 0 and len(preds[0]["keypoints"]) == 51
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    import analysis
    runs, rows, probe_rows = analysis.load(str(tmp_path))
    assert list(runs.run) == ["run"] and runs["method.name"].iloc[0] == "dual" and runs.status.iloc[0] == "done"
    assert len(rows) == len(metrics) and set(rows.run) == {"run"} and len(probe_rows) == len(probes)
    # started again on a finished run: nothing retrained, same manifest
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=dual", "model.width=8",
                 "train.steps=6", "train.eval_every=3", "train.log_every=3", "train.probe_every=3",
                 "train.device=cpu", "--out", out, "--quiet"]) == 0
    assert json.load(open(os.path.join(out, "manifest.json")))["started"] == m["started"]
    # a different config never resumes from another run's checkpoint
    r = _cli("train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=dual", "train.steps=7", "--out", out)
    assert r.returncode == 2 and "another config" in r.stderr


def test_demo_runs_every_method_and_writes_table_and_figure(synth_root, tmp_path):
    out = str(tmp_path / "demo")
    rc = main(["demo", "--out", out, "--seed", "1", f"data.root={synth_root}", "model.width=8",
               "train.steps=4", "train.eval_every=2", "train.probe_every=2", "train.probe_size=16"])
    assert rc == 0
    table = open(os.path.join(out, "table.md")).read()
    for name in ("supervised", "consistency", "mean_teacher", "threshold", "reweight", "easy_hard", "dual"):
        assert name in table
        (folder,) = glob.glob(os.path.join(out, f"{name}-*"))  # runs of the demo grid: <method>-<run id>
        assert json.load(open(os.path.join(folder, "manifest.json")))["status"] == "done"
    for ext in ("png", "pdf"):
        assert os.path.getsize(os.path.join(out, f"collapse_curves.{ext}")) > 10_000
    # warm-started: one supervised stage for the seed, a second for dual's net 1; every run begins there
    stages = sorted(glob.glob(os.path.join(out, "warm_start", "supervised-*")))
    assert len(stages) == 2
    for folder in glob.glob(os.path.join(out, "*-*")):
        if os.path.isdir(folder):
            init = yaml.safe_load(open(os.path.join(folder, "config.yaml")))["train"]["init_from"].split(",")
            assert init[0] in stages and len(init) == (2 if "/dual-" in folder else 1)
    # one detector and one final AP: the demo table, `collapse report` and analysis.collapse_table agree
    import analysis
    from analysis.demo import demo_table
    names = [os.path.basename(f) for f in glob.glob(os.path.join(out, "*-*")) if os.path.isdir(f)]
    table = demo_table(out, names)
    runs, metrics, probes = analysis.load(out)
    assert len(runs) == 7  # the stages are not results of the study
    verdicts = analysis.collapse_table(runs, probes, metrics).set_index("label")
    for label, row in verdicts.iterrows():
        assert table.loc[label, "collapsed"] == row.collapsed and table.loc[label, "AP"] == row.AP
    report = analysis.report(out)
    for label in verdicts.index:
        line = next(l for l in report.splitlines() if l.startswith(f"| {label} "))
        assert f"{100 * table.loc[label, 'AP']:.1f} ±" in line


def test_tensorboard_events_mirror_the_run_files(synth_root, tmp_path):
    """train.tensorboard: the event files (read back with tensorboard's own reader) hold the losses, lr and
    AP per net of metrics.parquet, the collapse index, and a pixel-response histogram at every probe whose
    counts are the probe's hist shares."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = str(tmp_path / "run")
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=dual", "model.width=8",
                 "train.steps=6", "train.eval_every=3", "train.log_every=3", "train.probe_every=3", "train.probe_size=16",
                 "train.device=cpu", "train.tensorboard=true", "--out", out, "--quiet"]) == 0
    ev = EventAccumulator(os.path.join(out, "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    metrics = pd.read_parquet(os.path.join(out, "metrics.parquet"))
    for tag, name in (("loss/sup0", "loss/sup0"), ("loss/unsup1", "loss/unsup1"), ("lr", "lr"),
                      ("val/AP/net0", "AP/net0"), ("val/AP/ens", "AP/ens")):
        got = [(e.step, e.value) for e in ev.Scalars(tag)]
        want = metrics[metrics.name == name].sort_values("step")
        assert [s for s, _ in got] == list(want.step), tag
        assert all(abs(a - b) < 1e-6 * max(1, abs(b)) for (_, a), b in zip(got, want.value)), tag
    index = ev.Scalars("unlabeled/collapse_index/net1")
    assert [e.step for e in index] == [0, 3, 6] and index[0].value == 1.0 and all(0 <= e.value <= 1 for e in index)
    hist = ev.Histograms("unlabeled/response/net0")
    assert [h.step for h in hist] == [0, 3, 6]
    probes = pd.read_parquet(os.path.join(out, "probes.parquet"))
    shares = probes[(probes.name == "hist") & (probes.split == "unlabeled") & (probes.net == 0) & (probes.step == 6)]
    last = hist[-1].histogram_value
    assert last.num == 16 * 17 * 32 * 24  # every pixel of the probe crops' heatmaps
    assert all(abs(c / last.num - s) < 1e-6 for c, s in zip(last.bucket, shares.sort_values("param").value))
