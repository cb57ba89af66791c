"""CUDA's rules on the CPU (collapse/cuda_rules.py): every method's real training step makes the host wait
for nothing and computes no geometry in low precision; bf16 and fp32 steps share their geometry bit for
bit; the recorder catches what it must; the Stopwatch waits for its events before reading them."""
import pytest
import torch

from collapse import cuda_rules
from collapse.cuda_rules import Recorder, audit, audit_variant, geometry_across_precisions, gpu_paths, variant_config
from collapse.device import Stopwatch
from collapse.methods import METHODS
from collapse.train import Trainer


def test_every_registered_method_has_a_variant_in_the_audit():
    assert {v.split("/")[0] for v in cuda_rules.VARIANTS} == set(METHODS)


def test_no_step_of_any_method_waits_for_the_device_or_computes_geometry_in_bf16(synth_root, tmp_path):
    """The GPU branch of every step, in bf16 autocast: 0 host waits, 0 low-precision geometry sites (stage
    changes of the pseudo-label family excepted: docs/speed_and_gpus.md, "What may wait")."""
    report = audit(synth_root, str(tmp_path))
    assert {v: r for v, r in report.items() if r["syncs"] or r["low_precision"]} == {}


def _findings(fn, *args):
    with gpu_paths(), Recorder() as r:
        fn(*args)
    return r.syncs, r.low_precision


def test_the_recorder_catches_what_would_wait_or_lose_precision():
    x = torch.rand(8, 3, 3)
    waits = {
        "item": lambda: x.sum().item(),
        "bool": lambda: bool((x > 2).any()),
        "mask index": lambda: x[x > 0.5],
        "mask assign": lambda: x.clone().__setitem__(x > 0.5, 0.0),
        "nonzero": lambda: torch.nonzero(x),
        "masked_select": lambda: x.masked_select(x > 0.5),
        "unique": lambda: torch.unique(x),
        "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2], device=x.device)),
        "inverse with its check": lambda: torch.linalg.inv(x + 3 * torch.eye(3, device=x.device)),
        "to host": lambda: x.cpu(),
        "tolist": lambda: x.tolist(),
        "host data": lambda: torch.tensor([1.0, 2.0], device=x.device),
        "numpy data": lambda: torch.from_numpy(x.numpy()),
        "no device": lambda: torch.zeros(3),
    }
    for name, fn in waits.items():
        syncs, _ = _findings(fn)
        assert syncs, name
        assert all("tests/test_cuda_rules.py" in s for s in syncs), syncs  # findings name the line
    fine = [lambda: torch.linalg.inv_ex(x + 3 * torch.eye(3, device=x.device)).inverse, lambda: x.masked_fill(x > 0.5, 0),
            lambda: torch.where(x > 0.5, x, 0.0), lambda: torch.zeros(3, device=x.device), lambda: x.argmax(),
            lambda: x.clone().__setitem__((slice(None), 2, 2), 1.0),
            lambda: x.gather(0, torch.zeros(1, 3, 3, dtype=torch.long, device=x.device)),
            lambda: torch.repeat_interleave(x[:2, 0, 0], torch.ones(2, dtype=torch.long, device=x.device), output_size=2)]
    for fn in fine:
        syncs, low = _findings(fn)
        assert syncs == [] and low == []
    with torch.autocast("cpu", torch.bfloat16):  # CPU autocast runs matmul in bf16 (and casts linalg to fp32)
        _, low = _findings(lambda: x @ x)
    assert low and "bfloat16" in low[0]
    with gpu_paths(), Recorder() as r, pytest.raises(RuntimeError, match="Low precision"):
        torch.linalg.inv_ex(x.bfloat16())  # what CUDA's autocast lets through (the CPU's casts it to float32)
    assert r.low_precision and "linalg_inv_ex" in r.low_precision[0]


def test_an_injected_item_in_a_method_step_is_caught(synth_root, tmp_path, monkeypatch):
    tr = Trainer(variant_config(synth_root, "dual"), str(tmp_path / "dual"), progress=False)
    real = type(tr.method).unsupervised

    def chatty(self, ctx, unl):
        terms = real(self, ctx, unl)
        if terms["unsup0"].item() > 1e9:  # a host wait, as a careless recipe would write it
            raise AssertionError
        return terms

    monkeypatch.setattr(type(tr.method), "unsupervised", chatty)
    syncs, low = audit_variant(tr, warmup=1, steps=3)
    assert len(syncs) == 1 and "tests/test_cuda_rules.py" in syncs[0] and "_local_scalar_dense" not in syncs[0]
    assert "reads a value on the host" in syncs[0] and low == []


@pytest.mark.parametrize("variant", ["dual", "multi_augs", "sspcm", "pseudo_label"])
def test_a_bf16_step_has_the_geometry_targets_and_masks_of_a_float32_step(synth_root, tmp_path, variant):
    """Same seed, same weights: bf16 autocast changes the network passes, not one bit of the view matrices'
    inverses, the sampling grids, the labeled targets or the field masks."""
    parts = geometry_across_precisions(synth_root, str(tmp_path), variant)
    assert parts["geometry"][0] > 0 and parts["targets"][0] > 0, parts
    assert parts["fields"][0] > 0 or variant == "pseudo_label", parts  # its teacher stage has no field yet
    assert all(equal for _, equal in parts.values()), parts


class _Event:
    """A CUDA event as CUDA treats it: elapsed_time raises unless both events have completed; waiting for one
    completes every event recorded before it on the stream."""
    clock, completed = 0.0, 0.0

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self, stream=None):
        _Event.clock += 1.0
        self.t = _Event.clock

    def synchronize(self):
        _Event.completed = max(_Event.completed, self.t)

    def elapsed_time(self, end):
        if max(self.t, end.t) > _Event.completed:
            raise RuntimeError("CUDA error: device not ready")
        return (end.t - self.t) * 1000.0


def test_the_stopwatch_waits_for_its_last_event_before_reading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    clock = Stopwatch(torch.device("cuda"))
    for _ in range(3):
        clock.start()
        clock.stop()
    assert clock.read() == pytest.approx(3.0)  # three sections of one tick each, read without error
    assert clock.read() == 0.0
