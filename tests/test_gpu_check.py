"""`collapse gpu-check`: its CPU half and report on any machine, and the pieces of its GPU half that a CPU
can exercise (the same random numbers on two devices; a step compared with another)."""
import json
import os

import pytest

from collapse import cuda_rules, gpu_check
from collapse.cli import main
from collapse.train import Trainer


def _trainer(root, folder, variant, precision):
    return gpu_check.host_drawn(Trainer(cuda_rules.variant_config(root, variant, f"train.precision={precision}"),
                                        folder, progress=False))


@pytest.mark.parametrize("variant", ["dual", "sspcm"])
def test_two_devices_fed_the_same_numbers_compare_exactly_and_bf16_within_its_tolerance(synth_root, tmp_path, variant):
    """Host-drawn numbers make two trainers' first steps identical (CUDA vs CPU differ only by their kernels);
    bf16 autocast against float32 stays inside the tolerance gpu-check applies to a CUDA bf16 step."""
    same = gpu_check.compare_steps(_trainer(synth_root, str(tmp_path / "a"), variant, "fp32"),
                                   _trainer(synth_root, str(tmp_path / "b"), variant, "fp32"))
    assert same == dict(loss_rel=0.0, grad_rel=0.0)
    bf16 = gpu_check.compare_steps(_trainer(synth_root, str(tmp_path / "c"), variant, "fp32"),
                                   _trainer(synth_root, str(tmp_path / "d"), variant, "bf16"))
    assert 0 < bf16["grad_rel"] < gpu_check.BF16_TOLERANCE and bf16["loss_rel"] < gpu_check.BF16_TOLERANCE


def test_gpu_check_on_a_cpu_runs_its_cpu_half_and_lists_what_is_owed(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_rules, "VARIANTS", {k: cuda_rules.VARIANTS[k] for k in ("dual", "multi_augs", "sspcm")})
    real = gpu_check.environment()
    monkeypatch.setattr(gpu_check, "environment", lambda: dict(real, gpus=0))  # a CPU-only machine, even on a GPU host
    out = str(tmp_path / "check")
    assert main(["gpu-check", "--out", out]) == 0
    report = json.load(open(os.path.join(out, "gpu_check.json")))
    assert report["ok"] and report["cpu_rules"]["waits"] == 0 and report["cpu_rules"]["low_precision"] == 0
    assert set(report["cpu_rules"]["variants"]) == {"dual", "multi_augs", "sspcm"}
    assert len(report["owed"]) == 5 and "sync_debug" not in report
    md = open(os.path.join(out, "gpu_check.md")).read()
    assert "| CPU audit of every method's step (CUDA's rules) | pass: 0 host waits" in md and "- pytest -m cuda" in md
