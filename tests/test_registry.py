"""Every registered method through the real Trainer on the CPU: a few steps, a checkpoint, a resume in a new
Trainer, and the same nets, teachers and state as a run that never stopped; the schedules every method shares
(the unsupervised weight's ramp-up, the LR drop) against numbers computed by hand."""
import math

import pytest
import torch

from collapse.cuda_rules import variant_config
from collapse.methods import METHODS
from collapse.train import Trainer

STEPS, STOP = 8, 4  # every stage change of the small variants (steps 2 and 3) and SSPCM's snapshots fall inside


def _trainer(root, name, out):
    cfg = variant_config(root, name, "train.precision=fp32", "train.probe_every=0", "train.threads=1",
                         f"train.steps={STEPS}", "train.lr_steps=[3]")
    return Trainer(cfg, str(out), progress=False)


def _state(tr):
    nets = [t.detach().clone() for n in tr.nets + tr.ctx.teachers for t in n.state_dict().values()]
    return nets, tr.draws.get_state()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_resumes_exactly(name, synth_root, tmp_path):
    straight = _trainer(synth_root, name, tmp_path / "straight")
    straight.begin()
    lrs = []
    for _ in range(STEPS):
        lrs.append(straight.opt.param_groups[0]["lr"])
        straight.train_step()
    assert lrs == pytest.approx([1e-3] * 3 + [1e-4] * (STEPS - 3))  # train.lr_steps [3]: x0.1 from step 3 on
    first = _trainer(synth_root, name, tmp_path / "stopped")
    first.begin()
    for _ in range(STOP):
        first.train_step()
    first.save()
    del first
    resumed = _trainer(synth_root, name, tmp_path / "stopped")
    resumed.begin()  # loads the checkpoint: step, nets, optimizer, schedule, draws, method state, pools
    assert resumed.step == STOP
    while resumed.step < STEPS:
        resumed.train_step()
    (a, ga), (b, gb) = _state(straight), _state(resumed)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), name
    assert torch.equal(ga, gb)
    assert straight.method.state_dict().keys() == resumed.method.state_dict().keys()


def test_the_unsupervised_weight_ramps_up_as_the_sigmoid_schedule():
    """unsup_weight x exp(-5 (1 - t / rampup)^2) until rampup, then unsup_weight (Laine & Aila's ramp-up)."""
    from collapse import config
    method = METHODS["consistency"](config.load(None, ["method.name=consistency", "method.unsup_weight=2",
                                                       "method.rampup=100"]).method)
    assert method.unsup_weight(0) == pytest.approx(2 * math.exp(-5))
    assert method.unsup_weight(50) == pytest.approx(2 * math.exp(-5 * 0.25))
    assert method.unsup_weight(100) == method.unsup_weight(1000) == 2
    ramp = [method.unsup_weight(s) for s in range(0, 101, 10)]
    assert ramp == sorted(ramp)
    flat = METHODS["consistency"](config.load(None, ["method.name=consistency", "method.unsup_weight=2"]).method)
    assert flat.unsup_weight(0) == 2  # rampup 0: constant from the first step
