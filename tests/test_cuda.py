"""Where CUDA is present (skipped elsewhere; `pytest -m cuda`, run by `collapse gpu-check`): every method's
training step never waits for the device (torch.cuda.set_sync_debug_mode), a CUDA step computes the CPU's
numbers, the fast paths are on, the read-ahead ring hands out the rows it names over many batches, two GPUs
train one run without waiting and stay identical, and what a GPU run writes loads on a CPU-only machine.
The CPU proves the same rules without a GPU: tests/test_cuda_rules.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from collapse import config, cuda_rules, distributed, gpu_check
from collapse.gpu_check import steps_in_error_mode

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMALL = ["model.width=8", "train.steps=6", "train.eval_every=6", "train.log_every=3", "train.probe_every=3",
         "train.probe_size=16", "train.device=cuda", "train.progress=false", "train.precision=auto"]


def _trainer(synth_root, tmp_path, variant, *more):
    from collapse.train import Trainer
    return Trainer(cuda_rules.variant_config(synth_root, variant, *more, device="cuda"),
                   str(tmp_path / variant.replace("/", "_")), progress=False)


@pytest.mark.parametrize("variant", sorted(cuda_rules.VARIANTS))
def test_a_training_step_never_synchronises(synth_root, tmp_path, variant):
    tr = _trainer(synth_root, tmp_path, variant)
    for _ in range(2):  # warm-up: first calls allocate and build caches
        tr.train_step()
    torch.cuda.synchronize()
    steps_in_error_mode(tr, tr.cfg.train.steps - tr.step)  # through the stage changes of the staged recipes
    torch.cuda.synchronize()
    tr.batches.close()


@pytest.mark.parametrize("variant", ["dual", "sspcm", "multi_augs"])
def test_a_cuda_step_computes_the_cpu_numbers(synth_root, tmp_path, variant):
    """Same weights, batch and random numbers (host-drawn): float32 within 1e-4 relative (TF32 off), bf16
    autocast within gpu_check.BF16_TOLERANCE of the CPU's float32."""
    report = gpu_check.cuda_vs_cpu(synth_root, str(tmp_path), print, variants=(variant,))
    assert report["ok"], report


def test_read_ahead_hands_out_the_rows_it_names_over_many_ring_turns(synth_root, tmp_path):
    """40 batches through a ring of 4 pinned buffers (10 turns), taken without waiting, then checked: a slot
    overwritten before its copy finished would show another batch's rows."""
    tr = _trainer(synth_root, tmp_path, "dual/read_ahead")
    ahead = tr.batches.read_ahead["unlabeled"]
    assert not tr.batches.unlabeled_pool.resident
    for _ in range(2):
        tr.train_step()
    torch.cuda.synchronize()
    got = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(40):
            crops, _, idx = ahead.next(4)
            got.append((crops, idx))
            tr.train_step()  # the device stays busy, so copies and refills overlap
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    pool = tr.batches.unlabeled_pool
    for crops, idx in got:
        want = torch.from_numpy(np.asarray(pool.store.crops[pool.rows[idx.cpu().numpy()]]))
        assert torch.equal(crops.cpu(), want)
    tr.batches.close()


def _two_gpu_steps(root, folder, dump):
    """Each rank: warm up, then steps with host waits an error; rank's nets saved for comparison."""
    from collapse.train import Trainer
    cfg = config.load("configs/demo.yaml", [f"data.root={root}", "method.name=dual", "model.sync_bn=true", *SMALL,
                                            "method.joint_cutout=3", "method.randaugment=true"])
    tr = Trainer(cfg, folder, progress=False)
    assert tr.device == torch.device("cuda", tr.world.local_rank)
    for _ in range(2):
        tr.train_step()
    torch.cuda.synchronize()
    steps_in_error_mode(tr, 3)
    torch.cuda.synchronize()
    torch.save([{k: v.cpu() for k, v in n.state_dict().items()} for n in tr.nets], f"{dump}{tr.world.rank}.pt")
    tr.batches.close()
    distributed.leave()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_train_one_run_without_waiting_and_stay_identical(synth_root, tmp_path):
    dump = str(tmp_path / "rank")
    distributed.launch(2, torch.device("cuda"), _two_gpu_steps, synth_root, str(tmp_path / "steps"), dump)
    a, b = torch.load(dump + "0.pt"), torch.load(dump + "1.pt")
    for net_a, net_b in zip(a, b):  # weights and synchronised BatchNorm statistics: one model on both GPUs
        assert all(torch.equal(net_a[k], net_b[k]) for k in net_a)
    out = str(tmp_path / "ddp")
    r = subprocess.run([sys.executable, "-m", "collapse", "train", "configs/demo.yaml", f"data.root={synth_root}",
                        "method.name=dual", "model.sync_bn=true", *SMALL, "--nproc", "2", "--out", out, "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["status"] == "done" and m["world_size"] == 2 and m["device"] == "cuda:0"
    assert all(np.isfinite(v) for v in m["final"].values()) and "AP/net0" in m["final"]


def test_the_profiler_counts_no_synchronising_call_in_a_step(synth_root, tmp_path):
    """Only calls inside the step's own range count: the profiler synchronises on its own when it stops."""
    from torch.profiler import ProfilerActivity, profile, record_function
    tr = _trainer(synth_root, tmp_path, "dual")
    for _ in range(3):
        tr.train_step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("collapse_step"):
            tr.train_step()
    events = prof.events()
    step = next(e for e in events if e.name == "collapse_step")
    inside = [e for e in events if e.time_range.start >= step.time_range.start and e.time_range.end <= step.time_range.end]
    syncs = [e.name for e in inside if "Synchronize" in e.name or e.name in ("aten::item", "aten::_local_scalar_dense")
             or e.name.startswith("cudaMemcpy") and "Async" not in e.name]
    assert len(inside) > 50 and syncs == []


def test_the_fast_paths_are_on(synth_root, tmp_path):
    tr = _trainer(synth_root, tmp_path, "dual", "train.precision=auto")
    assert tr.bf16 and tr.batches.labeled_pool.resident and tr.draws.device.type == "cuda"
    assert all(p.is_contiguous(memory_format=torch.channels_last) for n in tr.nets for p in n.parameters() if p.dim() == 4)
    assert tr.opt.defaults.get("fused") is True
    assert tr.data_clock.how == "cuda events"


def test_the_stopwatch_reads_events_not_yet_complete(synth_root, tmp_path):
    """A read right after queueing work: CUDA's elapsed_time would raise on an event not yet complete."""
    from collapse.device import Stopwatch
    clock = Stopwatch(torch.device("cuda"))
    x = torch.randn(4096, 4096, device="cuda")
    clock.start()
    for _ in range(20):
        x = x @ x / 64
    clock.stop()
    assert clock.read() > 0


def test_a_gpu_run_loads_on_a_cpu_only_machine(synth_root, tmp_path):
    from collapse.cli import main
    out = str(tmp_path / "gpu")
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=dual", *SMALL,
                 "train.checkpoint_every=4", "--out", out, "--quiet"]) == 0  # a save at a step that is not a log step
    assert json.load(open(os.path.join(out, "manifest.json")))["timing"]["data_clock"] == "cuda events"
    code = ("import torch, pandas as pd, analysis; "
            f"ck = torch.load({os.path.join(out, 'checkpoint.pt')!r}, map_location='cpu', weights_only=False); "
            "assert all(v.device.type == 'cpu' for v in ck['nets'][0].values()); "
            f"runs, metrics, probes = analysis.load({str(tmp_path)!r}); assert len(metrics) and len(probes); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]
