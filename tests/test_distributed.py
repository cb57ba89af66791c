"""One run across two processes (DDP, gloo on the CPU): the global batch's gradient, ranks that stay
identical, rank 0 alone writing, a kill and a resume, torchrun and --nproc as one code path."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from collapse import config, distributed
from collapse.methods import is_loss
from collapse.train import Trainer, train
from conftest import REPO

# an EMA teacher (its buffers must stay equal across ranks), RandAugment's and joint cutout's draws (the
# global batch's numbers), the LR schedule, loss sums between log lines
RUN = ["model.width=8", "method.name=mean_teacher", "method.randaugment=true", "method.joint_cutout=2",
       "train.steps=24", "train.lr_steps=[16]", "train.checkpoint_every=2", "train.eval_every=12",
       "train.log_every=4", "train.probe_every=6", "train.probe_size=16", "train.threads=1",
       "train.device=cpu", "train.progress=false"]


def _cfg(root, *extra):
    return config.load("configs/demo.yaml", [f"data.root={root}", *RUN, *extra])


def _first_step_gradients(root, dump):
    """Every process: the first step's gradients after DDP's averaging, for supervised and dual (one launch:
    process start-up is most of this test's time); rank 0 keeps them."""
    grads = {}
    for method in ("supervised", "dual"):
        cfg = config.load("configs/demo.yaml", [f"data.root={root}", "model.width=8", f"method.name={method}",
                                                 "train.threads=1", "train.device=cpu", "train.precision=fp32",
                                                 "model.sync_bn=true", "train.probe_every=0"])
        tr = Trainer(cfg, f"{dump}-{method}-run", progress=False)
        n_lab, n_unl = tr.local_batches
        lab = tr.batches.labeled(n_lab)
        unl = tr.batches.unlabeled(n_unl) if tr.method.uses_unlabeled else None
        sum(v for k, v in tr.method.losses(tr.ctx, lab, unl).items() if is_loss(k)).backward()
        grads[method] = [[p.grad for p in n.parameters()] for n in tr.nets]
        main = tr.world.main
    if main:
        torch.save(grads, dump)
    distributed.leave()


def _train_and_keep_ranks(root, out, dump):
    tr = Trainer(_cfg(root), out, progress=False)
    tr.fit()
    torch.save(dict(nets=[n.state_dict() for n in tr.nets], teachers=[t.state_dict() for t in tr.ctx.teachers],
                    draws=tr.draws.get_state()), f"{dump}{tr.world.rank}.pt")
    distributed.leave()


def _train_in_own_folder(root, base):
    """Every rank in a folder of its own (as on machines without a shared filesystem): base + rank."""
    train(_cfg(root, "train.dist_timeout_s=120"), f"{base}{distributed.from_env().rank}", progress=False)


def _cli(root, out, *extra):
    return [sys.executable, "-m", "collapse", "train", "configs/demo.yaml", f"data.root={root}", *RUN, *extra,
            "--out", out, "--quiet"]


def _results(out):
    m = pd.read_parquet(os.path.join(out, "metrics.parquet"))
    p = pd.read_parquet(os.path.join(out, "probes.parquet"))
    return (m.sort_values(["step", "split", "name"]).reset_index(drop=True),
            p.sort_values(["step", "split", "net", "joint", "name", "param"]).reset_index(drop=True))


def _checkpoint_step(out):
    try:
        return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["step"]
    except Exception:
        return -1


def test_two_processes_compute_the_global_batch_gradient(synth_root, tmp_path):
    """With synchronised BatchNorm, the first step's averaged gradient over 2 x 8 samples is the
    gradient of one process on the same 16 (float32 summation order aside: 1e-3 relative, measured
    1e-5 for supervised and dual's net 0, 2e-4 for dual's net 1)."""
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    distributed.launch(2, torch.device("cpu"), _first_step_gradients, synth_root, two)
    _first_step_gradients(synth_root, one)
    a, b = torch.load(one), torch.load(two)
    assert sorted(a) == sorted(b) == ["dual", "supervised"]
    for method in a:
        for net_a, net_b in zip(a[method], b[method]):
            diff = sum(((x - y) ** 2).sum() for x, y in zip(net_a, net_b)) ** 0.5
            size = sum((x ** 2).sum() for x in net_a) ** 0.5
            assert size > 0 and diff / size < 1e-3, (method, float(diff / size))


def test_a_two_process_run_keeps_its_ranks_identical_and_resumes_exactly_after_a_kill(synth_root, tmp_path):
    ref, dump = str(tmp_path / "ref"), str(tmp_path / "rank")
    distributed.launch(2, torch.device("cpu"), _train_and_keep_ranks, synth_root, ref, dump)
    r0, r1 = torch.load(dump + "0.pt", weights_only=False), torch.load(dump + "1.pt", weights_only=False)
    for part in ("nets", "teachers"):  # weights, BatchNorm statistics and the EMA teacher: one model
        for a, b in zip(r0[part], r1[part]):
            assert all(torch.equal(a[k], b[k]) for k in a), part
    assert torch.equal(r0["draws"], r1["draws"])  # the generators never drift apart
    m = json.load(open(os.path.join(ref, "manifest.json")))
    assert m["status"] == "done" and m["world_size"] == 2 and m["steps"] == 24
    ref_metrics, ref_probes = _results(ref)
    assert not ref_metrics.duplicated(["step", "split", "name"]).any()  # rank 0 alone wrote
    assert sorted(ref_metrics[ref_metrics.name == "AP"].step) == [12, 24]
    ckpt = torch.load(os.path.join(ref, "checkpoint.pt"), weights_only=False)
    assert all(torch.equal(ckpt["nets"][0][k], r0["nets"][0][k]) for k in ckpt["nets"][0])

    # --nproc 2, killed (the launcher, with SIGKILL) between checkpoints, then resumed
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(_cli(synth_root, out, "--nproc", "2"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and _checkpoint_step(out) < 8:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at = _checkpoint_step(out)
    assert 0 < at < 24, "the kill must land mid-run"
    time.sleep(0.5)
    assert _checkpoint_step(out) == at, "the ranks died with their launcher"
    assert json.load(open(os.path.join(out, "manifest.json")))["status"] == "running"
    # no shared filesystem: rank 0's folder holds the killed run, rank 1's nothing; rank 0 decides to resume
    # from its step and every rank takes its checkpoint (else ranks at different steps: a hang, or other numbers)
    shutil.copytree(out, str(tmp_path / "own0"))
    distributed.launch(2, torch.device("cpu"), _train_in_own_folder, synth_root, str(tmp_path / "own"))
    assert not os.path.exists(str(tmp_path / "own1" / "checkpoint.pt"))
    # torchrun resumes the killed run: the same code path from another launcher
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "collapse",
           *_cli(synth_root, out)[3:]]
    ran = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    for folder in (out, str(tmp_path / "own0")):
        metrics, probes = _results(folder)
        pd.testing.assert_frame_equal(metrics, ref_metrics)   # every loss, AP and probe exactly
        pd.testing.assert_frame_equal(probes, ref_probes)
        final = torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=False)
        for part in ("nets", "teachers"):
            for a, b in zip(final[part], ckpt[part]):
                assert all(torch.equal(a[k], b[k]) for k in a), (folder, part)


def test_a_global_batch_that_does_not_divide_is_one_line_before_any_process_starts(synth_root, tmp_path):
    out = str(tmp_path / "run")
    r = subprocess.run(_cli(synth_root, out, "train.batch_labeled=15", "--nproc", "2"), cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and not os.path.exists(out)
    assert r.stderr.strip().splitlines() == [
        "collapse: error: config key 'train.batch_labeled' (15) must divide among 2 processes"]


def test_a_grid_deals_its_gpus_out_to_ddp_runs():
    from collapse.executors import GridError, gpu_slots
    slots = gpu_slots(["0", "1", "2", "3", "4"], 2)  # five GPUs, two per run: two runs at once, one GPU idle
    assert [s["env"]["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    assert all(s["options"] == ["--nproc", "2"] and s["args"] == ["train.device=cuda"] for s in slots)
    assert [s["options"] for s in gpu_slots(["3", "5"], 1)] == [[], []]
    with pytest.raises(GridError, match="does not fit"):
        gpu_slots(["0"], 2)


def test_a_cluster_launcher_places_each_rank(monkeypatch):
    """LOCAL_RANK (or RANK mod LOCAL_WORLD_SIZE) places a rank on its machine; RANK alone is refused (wrong on a
    second node); a process that sees one GPU uses cuda:0; train.device=cpu is honoured; --nproc on the CPU
    is not bounded by the GPU count."""
    for k in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(config.ConfigError, match="LOCAL_RANK"):
        distributed.from_env()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.from_env() == distributed.World(5, 8, 1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    world = distributed.from_env()
    assert world == distributed.World(5, 8, 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # SLURM / Kubernetes: one visible GPU per process
    assert distributed.rank_device(world, torch.device("cuda")) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.rank_device(world, torch.device("cuda")) == torch.device("cuda", 3)
    assert distributed.rank_device(world, torch.device("cpu")) == torch.device("cpu")
    distributed.check_nproc(8, torch.device("cpu"))
    with pytest.raises(config.ConfigError, match="visible GPUs"):
        distributed.check_nproc(8, torch.device("cuda"))
