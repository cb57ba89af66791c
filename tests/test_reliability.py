"""Reliability: exact resume after SIGKILL, claims under concurrent grids, non-finite losses, bad input."""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from collapse.cli import parser
from conftest import REPO

# small, deterministic (one thread on CPU), and exercising every state a resume must restore: an EMA
# teacher, RandAugment and joint cutout draws, the LR schedule, loss sums between log lines
RUN = ["model.width=8", "method.name=mean_teacher", "method.randaugment=true", "method.joint_cutout=2",
       "train.steps=36", "train.lr_steps=[24]", "train.checkpoint_every=3", "train.eval_every=18",
       "train.log_every=4", "train.probe_every=6", "train.probe_size=16", "train.threads=1",
       "train.device=cpu", "train.progress=false"]


def _train_cmd(root, out, extra=()):
    return [sys.executable, "-m", "collapse", "train", "configs/demo.yaml", f"data.root={root}", *RUN, *extra,
            "--out", out, "--quiet"]


def _checkpoint_step(out):
    try:
        return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["step"]
    except Exception:  # not there yet (it is replaced atomically, so never half-read)
        return -1


def _results(out):
    m = pd.read_parquet(os.path.join(out, "metrics.parquet"))
    p = pd.read_parquet(os.path.join(out, "probes.parquet"))
    val = m[m.split == "val"].sort_values(["step", "name"]).reset_index(drop=True)
    return val, m[m.split == "train"].sort_values(["step", "name"]).reset_index(drop=True), \
        p.sort_values(["step", "split", "net", "joint", "name", "param"]).reset_index(drop=True)


def test_sigkill_at_random_steps_then_resume_gives_identical_results(synth_root, tmp_path):
    """One run killed three times (the first launch and two resumes, each with SIGKILL at a random moment),
    then resumed to the end: every loss, LR, AP, probe and the teacher equal to a run never killed."""
    ref = str(tmp_path / "ref")
    subprocess.run(_train_cmd(synth_root, ref), cwd=REPO, check=True, capture_output=True)
    ref_val, ref_train, ref_probes = _results(ref)
    rng = random.Random(20261203)  # fixed: a failure names its kill points and can be replayed
    out, kills = str(tmp_path / "killed"), []
    # one random kill point in each third of the run, so the three land at different checkpoints
    for target in [rng.randint(3, 6), rng.randint(12, 15), rng.randint(21, 24)]:
        proc = subprocess.Popen(_train_cmd(synth_root, out), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and _checkpoint_step(out) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))  # land anywhere between checkpoints
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at = _checkpoint_step(out)
        assert 0 < at < 36, "the kill must land mid-run"
        assert json.load(open(os.path.join(out, "manifest.json")))["status"] == "running"
        kills.append(at)
    assert len(set(kills)) == 3 and kills == sorted(kills), kills  # three resumes, each from a later checkpoint
    subprocess.run(_train_cmd(synth_root, out), cwd=REPO, check=True, capture_output=True)
    val, train, probes = _results(out)
    assert json.load(open(os.path.join(out, "manifest.json")))["status"] == "done"
    pd.testing.assert_frame_equal(val, ref_val, obj=f"val metrics after kills at steps {kills}")  # every AP ... exactly
    pd.testing.assert_frame_equal(train, ref_train, obj=f"losses and LR after kills at steps {kills}")
    pd.testing.assert_frame_equal(probes, ref_probes)
    a = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(ref, "checkpoint.pt"), weights_only=False)
    for x, y in zip(a["teachers"][0].values(), b["teachers"][0].values()):
        assert torch.equal(x, y)


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(synth_root, tmp_path, monkeypatch):
    from collapse import config
    from collapse.methods.base import Method
    from collapse.train import NonFiniteLoss, train
    real = Method.losses

    def poisoned(self, ctx, lab, unl):
        terms = real(self, ctx, lab, unl)
        if ctx.step >= 13:
            terms["sup"] = terms["sup"] * float("nan")
        return terms
    monkeypatch.setattr(Method, "losses", poisoned)
    cfg = config.load("configs/demo.yaml", [f"data.root={synth_root}", "method.name=supervised",
                                            *(a for a in RUN if not a.startswith("method."))])
    out = str(tmp_path / "nan")
    with pytest.raises(NonFiniteLoss):
        train(cfg, out, progress=False)
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["status"] == "failed" and "non-finite" in m["reason"]
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert ck["step"] == 12 and all(torch.isfinite(v).all() for v in ck["nets"][0].values() if v.is_floating_point())


def _grid(tmp_path, root, variants, name="g.yaml"):
    path = tmp_path / name
    fixed = {"data.root": root, "model.width": 8, "train.steps": 6, "train.eval_every": 6, "train.probe_every": 3,
             "train.probe_size": 8, "train.log_every": 3}
    path.write_text(yaml.safe_dump(dict(base=os.path.join(REPO, "configs/demo.yaml"), fixed=fixed,
                                        variants=variants, axes={"train.seed": [0]})))
    return str(path)


def test_a_diverging_run_fails_alone_and_the_grid_goes_on(synth_root, tmp_path):
    from collapse.grid import run_grid
    g = _grid(tmp_path, synth_root, [{"method.name": "supervised", "train.lr": 1e8}, {"method.name": "consistency"}])
    states = run_grid(g, str(tmp_path / "r"), threads=1)
    assert sorted(states.values()) == ["done", "failed"]
    failed = next(n for n, s in states.items() if s == "failed")
    m = json.load(open(tmp_path / "r" / failed / "manifest.json"))
    assert "non-finite loss" in m["reason"] and m["exit_code"] == 1


def test_two_grid_processes_on_one_folder_run_each_run_once(synth_root, tmp_path):
    g = _grid(tmp_path, synth_root, [{"method.name": n} for n in ("supervised", "consistency", "easy_hard")])
    out = str(tmp_path / "r")
    from collapse.grid import expand
    from collapse.data.splits import ensure_data
    runs = expand(g, out)
    ensure_data(runs[0].cfg)
    # a stale claim left by a dead process is recovered
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(out)
    with open(runs[0].folder + ".claim", "w") as f:
        f.write(f"{os.uname().nodename} {dead.pid} 0\n")
    cmd = [sys.executable, "-m", "collapse", "grid", g, "--out", out, "--jobs", "1", "--threads", "1"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    for r in runs:
        assert json.load(open(os.path.join(r.folder, "manifest.json")))["status"] == "done"
        log = open(os.path.join(out, "logs", r.name + ".log")).read()
        assert log.count(" done: ") == 1, (r.name, log)  # trained exactly once, by one of the two
        assert not os.path.exists(r.folder + ".claim")
    # each run is reported done by at least one of the two (both may list one the other just finished)
    assert all(any(r.name in o and " done " in o.split(r.name, 1)[1].splitlines()[0] for o in outputs) for r in runs)


# -- bad input: one line on stderr, exit code 2, nothing written ---------------------------------
def _coco_root(tmp_path, synth_root, mutate=None, image=None):
    """A copy of a few synthetic images in COCO layout, then `mutate(train json)` / `image(path)`."""
    root = tmp_path / "coco"
    for split in ("train", "val"):
        ann = json.load(open(os.path.join(synth_root, "annotations", f"person_keypoints_{split}.json")))
        ann["images"] = ann["images"][:4]
        keep = {i["id"] for i in ann["images"]}
        ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in keep]
        os.makedirs(root / "images" / split, exist_ok=True)
        for i in ann["images"]:
            shutil.copy(os.path.join(synth_root, "images", split, i["file_name"]), root / "images" / split)
        if split == "train" and mutate:
            ann = mutate(ann)
        os.makedirs(root / "annotations", exist_ok=True)
        text = ann if isinstance(ann, str) else json.dumps(ann)
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(text)
    if image:
        image(root / "images" / "train" / ann_first_file(root))
    return str(root)


def ann_first_file(root):
    return json.load(open(root / "annotations" / "person_keypoints_train.json"))["images"][0]["file_name"]


def _first_ann(key, value):
    def f(ann):
        ann["annotations"][0][key] = value
        return ann
    return f


def _all_anns(key, value):
    def f(ann):
        for a in ann["annotations"]:
            a[key] = value
        return ann
    return f


TRAIN = ["train", "configs/demo.yaml"]
COCO = ["data.source=coco", "data.labeled=2", "model.width=8", "train.steps=2"]
def _touch(path):
    path.write_text("")
    return path


BAD = [  # (name, make(tmp_path, synth_root) -> argv, expected text in the message)
    ("unknown config key", lambda t, s: [*TRAIN, "train.stepz=1"], "unknown config key 'train.stepz'"),
    ("mistyped value", lambda t, s: [*TRAIN, "train.steps=many"], "'train.steps' must be int"),
    ("list expected", lambda t, s: [*TRAIN, "data.input_size=5"], "must be a list"),
    ("negative steps", lambda t, s: [*TRAIN, "train.steps=-3"], "must be positive"),
    ("override without =", lambda t, s: [*TRAIN, "train.steps"], "must look like key.sub=value"),
    ("missing config file", lambda t, s: ["train", str(t / "none.yaml")], "config file not found"),
    ("config not YAML", lambda t, s: ["train", _write(t / "bad.yaml", "a: [1, 2\n")], "is not valid YAML"),
    ("unknown method", lambda t, s: [*TRAIN, f"data.root={s}", "method.name=magic"], "unknown method 'magic'"),
    ("unknown model", lambda t, s: [*TRAIN, f"data.root={s}", "model.name=vgg"], "unknown model 'vgg'"),
    ("labeled larger than data", lambda t, s: [*TRAIN, f"data.root={s}", "data.labeled=99999"], "larger than"),
    ("unavailable device", lambda t, s: [*TRAIN, f"data.root={s}", "train.device=cuda:3"], "not available"),
    ("unknown device", lambda t, s: [*TRAIN, f"data.root={s}", "train.device=tpu"], "unknown device"),
    ("no processes", lambda t, s: [*TRAIN, f"data.root={s}", "--nproc", "0"], "--nproc must be at least 1"),
    ("missing data folder", lambda t, s: [*TRAIN, "data.source=coco", f"data.root={t}/nodata"], "data folder not found"),
    ("COCO json not JSON", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, lambda a: '{oops')}"], "not valid JSON"),
    ("COCO json lacks keys", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, lambda a: {'images': a['images']})}"],
     "lacks the COCO key 'annotations'"),
    ("annotation lacks ids", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, _drop_first('image_id'))}"],
     "lacks id, image_id or category_id"),
    ("keypoints of wrong length", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, _first_ann('keypoints', [1, 2, 2]))}"],
     "3 keypoint values, expected 51"),
    ("negative box", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, _first_ann('bbox', [10, 10, -5, 20]))}"],
     "negative box size"),
    ("zero boxes only", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, _all_anns('bbox', [10, 10, 0, 0]))}"],
     "no usable person annotations"),
    ("no person annotations", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, _all_anns('category_id', 7))}"],
     "no usable person annotations"),
    ("image missing", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, image=os.remove)}"], "missing or unreadable"),
    ("image unreadable", lambda t, s: [*TRAIN, *COCO, f"data.root={_coco_root(t, s, image=lambda p: p.write_bytes(b'not a png'))}"],
     "missing or unreadable"),
    ("report on a folder without runs", lambda t, s: ["report", str(_mkdir(t / "empty"))], "no runs in"),
    ("figures on a missing folder", lambda t, s: ["figures", str(t / "nothing"), "--out", str(t / "figs")],
     "results folder not found"),
    ("grid with an empty axis", lambda t, s: ["grid", _write(t / "g.yaml", f"base: {REPO}/configs/demo.yaml\naxes: {{train.seed: []}}\n"),
                                              "--out", str(t / "res")], "non-empty list"),
    ("grid file missing", lambda t, s: ["grid", str(t / "none.yaml"), "--out", str(t / "res")], "grid file not found"),
    ("GPUs per run without GPUs", lambda t, s: ["grid", f"{REPO}/configs/grids/demo.yaml", "--out", str(t / "res"),
                                                "--gpus-per-run", "2"], "no visible GPU"),
    ("grid with an unknown scale", lambda t, s: ["grid", f"{REPO}/configs/grids/imbalance.yaml", "--scale", "huge",
                                                 "--out", str(t / "res")], "no scale 'huge'"),
    ("grid with an unknown key", lambda t, s: ["grid", _write(t / "g.yaml", f"base: {REPO}/configs/demo.yaml\naxis: {{}}\n"),
                                               "--out", str(t / "res")], "unknown grid key"),
    ("Ray address that does not answer", lambda t, s: ["grid", f"{REPO}/configs/grids/demo.yaml", "--executor", "ray",
                                                       "--address", "127.0.0.1:9", "--out", str(t / "res")], "does not answer"),
    ("toy with a bad share", lambda t, s: ["toy", "--minor-share", "0.9", "--out", str(t / "toy")], "--minor-share"),
    ("prepare with no images", lambda t, s: ["prepare", "synthetic", "--out", str(t / "syn"), "--train", "0"], "must be positive"),
    ("a setting the method does not read", lambda t, s: [*TRAIN, "method.name=dual", "method.tau=0.5"],
     "method 'dual' has no setting 'tau'"),
    ("method settings not a mapping", lambda t, s: [*TRAIN, "method=dual"], "'method' must be a mapping"),
    ("claims on a folder without runs", lambda t, s: ["claims", str(_mkdir(t / "empty"))], "no runs in"),
    ("demo with bad seeds", lambda t, s: ["demo", "--seeds", "0,one", "--out", str(t / "demo")], "--seeds takes"),
    ("bench with no steps", lambda t, s: ["bench", "configs/demo.yaml", "--steps", "0"], "must be positive"),
    ("gpu-check into a file", lambda t, s: ["gpu-check", "--out", str(_touch(t / "report.txt"))], "is a file"),
    ("evaluate a folder that is not a run", lambda t, s: ["evaluate", str(_mkdir(t / "norun"))], "is not a run folder"),
    ("MPII file missing", lambda t, s: ["prepare", "mpii", "--annotations", str(t / "none.json"), "--images",
                                        str(_mkdir(t / "img")), "--out", str(t / "root"), "--split", "x"],
     "annotation file not found"),
    ("AIC image folder missing", lambda t, s: ["prepare", "aic", "--annotations", _write(t / "a.json", "[]"), "--images",
                                               str(t / "noimg"), "--out", str(t / "root"), "--split", "x"],
     "image folder not found"),
]


def _write(path, text):
    path.write_text(text)
    return str(path)


def _mkdir(path):
    os.makedirs(path)
    return path


def _drop_first(key):
    def f(ann):
        del ann["annotations"][0][key]
        return ann
    return f


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# these run as the user runs them, in a process of their own (the exit code, the entry point of the analysis
# commands, --debug's traceback); the rest of the table runs in this process, through the same `main`
AS_PROCESSES = {"unknown config key", "config not YAML", "image unreadable", "claims on a folder without runs",
                "grid file missing"}


def _argv(name, make, synth_root, tmp_path):
    if name == "Ray address that does not answer":
        pytest.importorskip("ray")
    argv = make(tmp_path, synth_root)
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "out"), "--quiet"]
    return argv


def _one_line_and_nothing_written(code, stderr, expect, before, tmp_path):
    assert code == 2, (code, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert expect in lines[0], lines[0]
    assert _files(tmp_path) == before  # no run folder, results, figures, stores or partial files
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,make,expect", [b for b in BAD if b[0] not in AS_PROCESSES],
                         ids=[b[0] for b in BAD if b[0] not in AS_PROCESSES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, make, expect, synth_root, tmp_path, capsys):
    from collapse.cli import main
    argv = _argv(name, make, synth_root, tmp_path)
    before = _files(tmp_path)
    capsys.readouterr()
    code = main(argv)
    _one_line_and_nothing_written(code, capsys.readouterr().err, expect, before, tmp_path)


@pytest.mark.parametrize("name,make,expect", [b for b in BAD if b[0] in AS_PROCESSES],
                         ids=[b[0] for b in BAD if b[0] in AS_PROCESSES])
def test_bad_input_in_a_process_of_its_own(name, make, expect, synth_root, tmp_path):
    argv = _argv(name, make, synth_root, tmp_path)
    before = _files(tmp_path)
    r = subprocess.run([sys.executable, "-m", "collapse", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    _one_line_and_nothing_written(r.returncode, r.stderr, expect, before, tmp_path)
    if name == "unknown config key":  # --debug shows the traceback instead
        d = subprocess.run([sys.executable, "-m", "collapse", "--debug", *argv], cwd=REPO, capture_output=True, text=True)
        assert "Traceback" in d.stderr


def test_every_command_has_a_bad_input_case(tmp_path, synth_root):
    """The table grows with the tool: every command of `collapse` (its own and the analysis plugin's) has at
    least one case above, so a new command without one fails here."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    covered = set()
    for i, (_, make, _) in enumerate(BAD):
        os.makedirs(tmp_path / str(i))
        covered.add(make(tmp_path / str(i), synth_root)[0])
    assert set(sub.choices) - covered == set()
