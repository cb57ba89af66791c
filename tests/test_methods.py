"""Every unsupervised loss sends gradient to the student and none to the teacher."""
import numpy as np
import pytest
import torch

from collapse import config
from collapse.data.batches import Batches
from collapse.data.store import Pool, build
from collapse.draws import Draws
from collapse.methods import Context, build_method, is_loss
from collapse.models import build_model


def _setup(synth_root, **method):
    overrides = [f"method.{k}={v}" for k, v in method.items()] + ["model.width=8"]
    cfg = config.load("configs/demo.yaml", overrides)
    store = build(synth_root, "val", tuple(cfg.data.input_size), cfg.data.store_margin)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    batches = Batches(cfg, Pool(store, np.arange(20), dev), Pool(store, np.arange(20, len(store)), dev), dev, Draws(gen))
    m = build_method(cfg.method)
    nets = [build_model(cfg.model, 17, cfg.data.heatmap_stride) for _ in range(m.nets)]
    for n in nets:  # make predictions non-trivial so targets are not all zero
        torch.nn.init.normal_(n.head.weight, std=0.1)
    ctx = Context(nets, batches)
    m.setup(ctx)
    return m, ctx, batches.unlabeled(6)


def _grad_norm(net):
    return sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("name, extra", [
    ("threshold", dict(tau=0.0)), ("reweight", {}), ("easy_hard", {}), ("easy_hard", dict(pair="hard_hard")),
    ("easy_hard", dict(pair="easy_easy")), ("easy_hard", dict(pair="hard_easy", joint_cutout=5, randaugment=True)),
])
def test_single_net_targets_carry_no_gradient(synth_root, name, extra):
    m, ctx, unl = _setup(synth_root, name=name, **extra)
    seen = []
    original = m.target
    m.target = lambda *a: seen.append(original(*a)) or seen[-1]
    loss = sum(v for k, v in m.unsupervised(ctx, unl).items() if is_loss(k))
    target, field = seen[0]
    assert not target.requires_grad and target.abs().sum() > 0 and not field.requires_grad
    loss.backward()
    assert _grad_norm(ctx.nets[0]) > 0


def test_naive_consistency_gradient_flows_through_both_predictions(synth_root):
    m, ctx, unl = _setup(synth_root, name="consistency")
    outs = []
    h = ctx.nets[0].register_forward_hook(lambda mod, i, o: outs.append(o))
    loss = m.unsupervised(ctx, unl)["unsup"]
    h.remove()
    for o in outs:
        o.retain_grad()
    loss.backward()
    assert len(outs) == 2 and all(o.grad is not None and o.grad.abs().sum() > 0 for o in outs)


@pytest.mark.parametrize("recipe", ["reference", "eval"])
def test_mean_teacher_gradient_and_ema_rule(synth_root, recipe):
    """reference (Tarvainen & Valpola): a train-mode teacher, parameters averaged with the decay warmed up as
    min(1 - 1/(t+1), ema), its BatchNorm statistics its own; eval: eval mode, statistics averaged too."""
    m, ctx, unl = _setup(synth_root, name="mean_teacher", ema=0.9, teacher=recipe)
    student, teacher = ctx.nets[0], ctx.teachers[0]
    assert teacher is not student and teacher.training == (recipe == "reference")
    m.unsupervised(ctx, unl)["unsup"].backward()
    assert _grad_norm(student) > 0 and all(p.grad is None for p in teacher.parameters())
    if recipe == "reference":
        assert [m.decay(t) for t in (0, 1, 3, 100)] == pytest.approx([0.0, 0.5, 0.75, 0.9])
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        for b in student.buffers():
            if b.is_floating_point():
                b.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    buffers = [b.clone() for b in teacher.buffers()]
    ctx.step = 100  # past the warm-up: the decay is ema
    m.after_step(ctx)
    for t0, t1, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-6)
    moved = [not torch.equal(b0, b1) for b0, b1 in zip(buffers, teacher.buffers()) if b0.is_floating_point()]
    assert not any(moved) if recipe == "reference" else all(moved)
    ctx.step = 0
    m.after_step(ctx)  # the first step's decay is 0 in the reference recipe: the teacher is the student
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters())) == (recipe == "reference")


def test_dual_each_net_learns_only_from_the_other(synth_root):
    m, ctx, unl = _setup(synth_root, name="dual", joint_cutout=5)
    assert m.sup_weight == 0.5
    terms = m.unsupervised(ctx, unl)
    terms["unsup0"].backward()
    assert _grad_norm(ctx.nets[0]) > 0 and _grad_norm(ctx.nets[1]) == 0


def test_threshold_masks_low_confidence_joints(synth_root):
    m, _, _ = _setup(synth_root, name="threshold", tau=0.6)
    heat = torch.zeros(2, 17, 8, 6)
    heat[0, 3, 2, 2] = 0.7
    heat[1, 5, 1, 1] = 0.5
    w = m.weight(heat.amax((2, 3)), heat)
    assert w[0, 3] == 1 and w.sum() == 1


def test_reweight_weighs_foreground(synth_root):
    m, _, _ = _setup(synth_root, name="reweight", fg_weight=4.0, fg_threshold=0.1)
    t = torch.zeros(1, 17, 4, 4)
    t[0, 0, 1, 1] = 0.5
    w = m.weight(t, t)
    assert w[0, 0, 1, 1] == 4 and w.sum() == 4 + 17 * 16 - 1
