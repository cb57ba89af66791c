"""Where CUDA is present (skipped elsewhere): a training step of every method never waits for the device,
the fast paths are on, and what a GPU run writes loads on a CPU-only machine. `pytest -m cuda`."""
import json
import os
import subprocess
import sys

import pytest
import torch

from collapse import config
from collapse.methods import METHODS

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMALL = ["model.width=8", "train.steps=6", "train.eval_every=6", "train.log_every=3", "train.probe_every=3",
         "train.probe_size=16", "train.device=cuda", "train.progress=false"]
EXTRA = {"threshold": ["method.tau=0.2"], "easy_hard": ["method.joint_cutout=3", "method.randaugment=true"],
         "dual": ["method.joint_cutout=3", "method.randaugment=true"], "pseudo_label": ["method.teacher_steps=2"],
         "self_training": ["method.teacher_steps=2"]}


def _trainer(synth_root, tmp_path, name, *more):
    from collapse.train import Trainer
    cfg = config.load("configs/demo.yaml", [f"data.root={synth_root}", f"method.name={name}", *SMALL,
                                            *EXTRA.get(name, []), *more])
    return Trainer(cfg, str(tmp_path / name), progress=False)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_training_step_never_synchronises(synth_root, tmp_path, name):
    tr = _trainer(synth_root, tmp_path, name)
    for _ in range(3):  # warm-up: first calls allocate and may build caches
        tr.train_step()
    torch.cuda.synchronize()
    steps = 2 if name not in ("pseudo_label", "self_training") else 1  # staged: stay inside a stage
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            tr.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_a_step_read_ahead_from_the_memory_map_never_synchronises(synth_root, tmp_path):
    import numpy as np
    tr = _trainer(synth_root, tmp_path, "dual", "data.resident_gb=0")
    assert not tr.batches.labeled_pool.resident and set(tr.batches.read_ahead) == {"labeled", "unlabeled"}
    for _ in range(3):
        tr.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            tr.train_step()
        crops, _, idx = tr.batches.read_ahead["unlabeled"].next(4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    pool = tr.batches.unlabeled_pool
    assert torch.equal(crops.cpu(), torch.from_numpy(np.asarray(pool.store.crops[pool.rows[idx.cpu().numpy()]])))
    tr.batches.close()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_two_gpu_run_with_synchronised_batchnorm_finishes(synth_root, tmp_path):
    out = str(tmp_path / "ddp")
    r = subprocess.run([sys.executable, "-m", "collapse", "train", "configs/demo.yaml", f"data.root={synth_root}",
                        "method.name=dual", "model.sync_bn=true", *SMALL, "--nproc", "2", "--out", out, "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["status"] == "done" and m["world_size"] == 2 and m["device"] == "cuda:0"


def test_the_profiler_counts_no_synchronising_call_in_a_step(synth_root, tmp_path):
    from torch.profiler import ProfilerActivity, profile
    tr = _trainer(synth_root, tmp_path, "dual")
    for _ in range(3):
        tr.train_step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tr.train_step()
    names = [e.name for e in prof.events()]
    syncs = [n for n in names if "Synchronize" in n or n in ("aten::item", "aten::_local_scalar_dense")]
    assert syncs == []


def test_the_fast_paths_are_on(synth_root, tmp_path):
    tr = _trainer(synth_root, tmp_path, "dual")
    assert tr.bf16 and tr.batches.labeled_pool.resident and tr.draws.device.type == "cuda"
    assert all(p.is_contiguous(memory_format=torch.channels_last) for n in tr.nets for p in n.parameters() if p.dim() == 4)
    assert tr.opt.defaults.get("fused") is True
    assert tr.data_clock.how == "cuda events"


def test_a_gpu_run_loads_on_a_cpu_only_machine(synth_root, tmp_path):
    from collapse.cli import main
    out = str(tmp_path / "gpu")
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=dual", *SMALL, "--out", out,
                 "--quiet"]) == 0
    assert json.load(open(os.path.join(out, "manifest.json")))["timing"]["data_clock"] == "cuda events"
    code = ("import torch, pandas as pd, analysis; "
            f"ck = torch.load({os.path.join(out, 'checkpoint.pt')!r}, map_location='cpu', weights_only=False); "
            "assert all(v.device.type == 'cpu' for v in ck['nets'][0].values()); "
            f"runs, metrics, probes = analysis.load({str(tmp_path)!r}); assert len(metrics) and len(probes); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]
