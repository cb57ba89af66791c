"""Exactness of the recipes: which pixels carry loss, which joint a mask gates after a mirror, what the
EMA teacher's statistics are, where a warm start begins. Each test fails on the bug it names."""
import json
import os

import pytest
import torch

from collapse.augment import about_centre
from collapse.cli import main
from collapse.data.batches import View
from collapse.methods import consistency as recipes
from test_methods import _setup

LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6


def _capture_loss(monkeypatch, module=recipes):
    """Record every (pred, target, weight) a recipe hands to heatmap_mse."""
    calls = []
    real = module.heatmap_mse

    def spy(pred, target, weight=None):
        calls.append((pred, target, weight))
        return real(pred, target, weight)
    monkeypatch.setattr(module, "heatmap_mse", spy)
    return calls


def _fixed_views(ctx, unl, student_matrix, student_flip):
    """Teacher on the plain view; student on `student_matrix` o plain (its flip given)."""
    n = len(unl["crops"])
    base = unl["base"]
    tv = View(ctx.batches.view(unl, "easy").image * 0, base, torch.zeros(n, dtype=torch.bool))
    A = student_matrix @ base
    sv = View(torch.zeros_like(tv.image), A, torch.full((n,), student_flip))
    ctx.batches.view = lambda unl, kind="easy", *a, **k: tv if kind == "easy" else sv
    return tv, sv


def test_threshold_mask_follows_the_joint_through_a_mirror(synth_root, monkeypatch):
    """The teacher is confident about one joint only (channel 5, left shoulder). The student's view is its
    mirror, so that joint's target moves to channel 6: the mask must open channel 6 and only it (the old
    code opened channel 5, gating the right shoulder's loss by the left shoulder's confidence)."""
    m, ctx, unl = _setup(synth_root, name="threshold", tau=0.5)
    n = len(unl["crops"])
    hm = ctx.batches.heatmap_hw
    mirror = about_centre(torch.zeros(n), torch.ones(n), torch.ones(n, dtype=torch.bool), ctx.batches.input_hw)
    _fixed_views(ctx, unl, mirror, True)
    heat = torch.zeros(n, 17, *hm)
    heat[:, LEFT_SHOULDER, 8, 5] = 0.9                     # left of the crop centre, confident
    heat[:, RIGHT_SHOULDER, 20, 18] = 0.3                  # elsewhere, below tau
    ctx.teachers[0] = lambda x: heat                       # what the teacher pass returns
    calls = _capture_loss(monkeypatch)
    m.unsupervised(ctx, unl)
    (_, target, weight), = calls
    assert target[:, RIGHT_SHOULDER].amax() > 0.8 and target[:, LEFT_SHOULDER].amax() < 0.4  # mirrored
    open_channels = weight.amax((2, 3)) > 0
    assert open_channels[:, RIGHT_SHOULDER].all()
    assert open_channels.sum() == n  # one channel per sample: the one holding the confident joint


def test_an_eval_mode_mean_teachers_statistics_are_averaged_by_default_and_copied_on_request(synth_root):
    for mode in ("average", "copy"):  # the reference recipe keeps its own: tests/test_methods.py
        m, ctx, _ = _setup(synth_root, name="mean_teacher", ema=0.9, ema_buffers=mode, teacher="eval")
        student, teacher = ctx.nets[0], ctx.teachers[0]
        with torch.no_grad():
            for b in student.buffers():
                b.add_(3) if b.is_floating_point() else b.add_(7)
        before = [b.clone() for b in teacher.buffers()]
        m.after_step(ctx)
        floats = 0
        for t0, t1, s in zip(before, teacher.buffers(), student.buffers()):
            if not t1.is_floating_point():
                assert torch.equal(t1, s)  # a count, not a statistic: always the student's
            elif mode == "average":
                floats += 1
                assert torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-6) and not torch.allclose(t1, s)
            else:
                floats += 1
                assert torch.equal(t1, s)
        assert floats > 0  # the tiny net has BatchNorm statistics


def _outside_teacher(ctx, tv, sv, margin):
    """(B,1,h,w) boolean: student heatmap pixels whose centre maps outside the teacher's input view by
    more than `margin` input pixels (computed from the matrices, independently of the transport code)."""
    b = ctx.batches
    h, w = b.heatmap_hw
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pts = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(len(sv.A), -1, -1) * b.stride
    back = tv.A @ torch.linalg.inv(sv.A)
    p = pts @ back[:, :2, :2].transpose(1, 2) + back[:, None, :2, 2]
    H, W = b.input_hw
    out = (p[..., 0] < -margin) | (p[..., 0] > W + margin) | (p[..., 1] < -margin) | (p[..., 1] > H + margin)
    inside = (p[..., 0] > margin) & (p[..., 0] < W - margin) & (p[..., 1] > margin) & (p[..., 1] < H - margin)
    return out.view(-1, 1, h, w), inside.view(-1, 1, h, w)


@pytest.mark.parametrize("name, extra", [
    ("consistency", {}), ("mean_teacher", {}), ("threshold", dict(tau=0.0)), ("reweight", {}),
    ("easy_hard", {}), ("easy_hard", dict(pair="hard_hard")), ("easy_hard", dict(pair="hard_easy")),
    ("easy_hard", dict(pair="easy_easy")), ("dual", {}), ("dual", dict(joint_cutout=3)),
])
def test_no_loss_where_the_teacher_saw_nothing(synth_root, monkeypatch, name, extra):
    """With strong views, student pixels whose content the teacher's view never held carry zero weight;
    pixels well inside the teacher's view carry their full weight."""
    m, ctx, unl = _setup(synth_root, name=name, **extra)
    a = ctx.batches.views.aug
    a.rotation, a.rot_prob, a.scale, a.hard_rotation, a.hard_rot_prob, a.hard_scale = 45, 1.0, 0.35, 45, 1.0, 0.35
    seen = []
    real_view = ctx.batches.view
    ctx.batches.view = lambda *args, **kw: seen.append(real_view(*args, **kw)) or seen[-1]
    calls = _capture_loss(monkeypatch)
    terms = m.unsupervised(ctx, unl)
    assert 0 < float(terms["stat/outside_field"]) < 1
    pairs = [(seen[0], seen[1])] if name != "dual" else [(seen[0], seen[1]), (seen[0], seen[2])]
    assert len(calls) == len(pairs)
    for (tv, sv), (_, target, weight) in zip(pairs, calls):
        outside, inside = _outside_teacher(ctx, tv, sv, margin=ctx.batches.stride)
        assert outside.any() and inside.any()
        w = weight.expand_as(target)
        assert (w * outside).abs().max() == 0
        if name not in ("threshold", "reweight"):  # (theirs carry their own weights inside)
            assert (w[inside.expand_as(w)] == 1).all()


@pytest.mark.parametrize("name", ["pseudo_label", "self_training"])
def test_pseudo_labels_carry_no_loss_beyond_the_view_the_teacher_labeled(synth_root, monkeypatch, name):
    from collapse.methods import pseudo
    m, ctx, unl = _setup(synth_root, name=name)
    a = ctx.batches.views.aug
    a.rotation, a.rot_prob, a.scale = 45, 1.0, 0.35
    n_pool = len(ctx.batches.unlabeled_pool)
    m.labels = (torch.full((n_pool, 17, 2), 30.0), torch.ones(n_pool, 17))  # every joint confident
    seen = []
    real_view = ctx.batches.view
    ctx.batches.view = lambda *args, **kw: seen.append(real_view(*args, **kw)) or seen[-1]
    calls = _capture_loss(monkeypatch, pseudo)
    m.unsupervised(ctx, unl)
    (_, target, weight), = calls
    plain = View(None, unl["base"], torch.zeros(len(unl["base"]), dtype=torch.bool))
    outside, inside = _outside_teacher(ctx, plain, seen[0], margin=ctx.batches.stride)
    assert outside.any() and (weight.expand_as(target) * outside).abs().max() == 0


def test_masked_pixels_carry_no_gradient_and_the_rest_are_unchanged():
    from collapse.methods import heatmap_mse
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 6, 5, generator=gen, requires_grad=True)
    target = torch.rand(2, 3, 6, 5, generator=gen)
    field = (torch.rand(2, 1, 6, 5, generator=gen) > 0.4).float()
    heatmap_mse(pred, target, field).backward()
    masked = pred.grad.clone()
    pred.grad = None
    heatmap_mse(pred, target).backward()
    keep = field.expand_as(pred).bool()
    assert (masked[~keep] == 0).all() and torch.equal(masked[keep], pred.grad[keep])


SMALL = ["model.width=8", "train.steps=6", "train.eval_every=6", "train.probe_every=3", "train.probe_size=16",
         "train.batch_labeled=8", "train.batch_unlabeled=8", "data.labeled=60", "train.progress=false"]


def test_a_warm_start_begins_exactly_where_its_source_ended(synth_root, tmp_path, capsys):
    src, warm = str(tmp_path / "src"), str(tmp_path / "warm")
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", *SMALL, "--out", src, "--quiet"]) == 0
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", *SMALL, "method.name=easy_hard",
                 f"train.init_from={src}", "--out", warm, "--quiet"]) == 0
    final = json.load(open(os.path.join(src, "manifest.json")))["final"]
    import pandas as pd
    m = pd.read_parquet(os.path.join(warm, "metrics.parquet"))
    at0 = m[(m.step == 0) & (m.split == "val")].set_index("name").value.to_dict()
    whole = {k: v for k, v in final.items() if "/" not in k}  # the source's final evaluation adds AP/face ... per part
    assert at0 and at0 == pytest.approx(whole, abs=0) and at0.keys() == whole.keys()
    # the very same predictions, not just the same summary
    assert open(os.path.join(src, "predictions", "step0000006.json")).read() == \
        open(os.path.join(warm, "predictions", "step0000000.json")).read()
    # and the warm run trained on from there: its final predictions differ
    assert open(os.path.join(warm, "predictions", "step0000006.json")).read() != \
        open(os.path.join(warm, "predictions", "step0000000.json")).read()
    # a source that is not a finished run, or holds another network: one line, exit 2, nothing written
    for bad, extra in ((str(tmp_path / "nothing"), []), (src, ["model.width=16"]), (f"{src},{src},{src}", [])):
        out = tmp_path / f"bad{len(bad)}{len(extra)}"
        capsys.readouterr()
        assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", *SMALL, *extra,
                     f"train.init_from={bad}", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("collapse: error: ") and "init_from" in err and len(err.splitlines()) == 1
        assert not out.exists()


def test_a_warm_started_grid_shares_one_stage_per_seed_and_gives_dual_two(tmp_path):
    import yaml
    from collapse.grid import SECOND_NET_SEED, expand
    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump(dict(
        base=os.path.abspath("configs/demo.yaml"), warm_start={"train.steps": 50},
        variants=[{"method.name": "supervised"}, {"method.name": "easy_hard"}, {"method.name": "dual"},
                  {"method.name": "consistency", "train.init_from": ""}],
        axes={"train.seed": [0, 1]})))
    runs = expand(str(g), str(tmp_path / "r"))
    stages = [r for r in runs if r.stage]
    assert runs[:len(stages)] == stages  # stages come first
    assert sorted(s.cfg.train.seed for s in stages) == [0, 1, SECOND_NET_SEED, 1 + SECOND_NET_SEED]
    assert all(s.cfg.method.name == "supervised" and s.cfg.train.steps == 50 and s.cfg.train.init_from == ""
               and os.path.basename(os.path.dirname(s.folder)) == "warm_start" for s in stages)
    by = {(r.cfg.method.name, r.cfg.train.seed): r.cfg.train.init_from for r in runs if not r.stage}
    stage_of = {s.cfg.train.seed: s.folder for s in stages}
    for seed in (0, 1):
        assert by["supervised", seed] == by["easy_hard", seed] == stage_of[seed]
        assert by["dual", seed] == f"{stage_of[seed]},{stage_of[seed + SECOND_NET_SEED]}"
        assert by["consistency", seed] == ""  # a run that says "from scratch" keeps it
    assert all(r.cfg.train.steps == 2200 for r in runs if not r.stage)
    # a results folder can move: the runs keep their ids (a source counts by its last two path parts)
    moved = expand(str(g), str(tmp_path / "elsewhere" / "r"))
    assert [r.run_id for r in moved] == [r.run_id for r in runs]


def test_dual_from_one_initialisation_is_exactly_easy_hard(synth_root, tmp_path):
    """Two identical nets that see the same batches and views teach each other what each would teach
    itself: dual with train.init_same is single-net easy_hard at the same supervised weight, bit for bit.
    (Measured on the demo too: the 'one init' rows of dual_vs_single equal easy_hard's.) A check that the
    two recipes draw the same views and carry the same targets; and the reason a second network only
    matters through a second initialisation here."""
    outs = {}
    for name, extra in (("easy_hard", ["method.sup_weight=0.5"]), ("dual", ["train.init_same=true"])):
        outs[name] = str(tmp_path / name)
        assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", *SMALL, f"method.name={name}",
                     *extra, "--out", outs[name], "--quiet"]) == 0
    single = open(os.path.join(outs["easy_hard"], "predictions", "step0000006.json")).read()
    dual = open(os.path.join(outs["dual"], "predictions", "step0000006_net0.json")).read()
    assert single == dual


def test_the_share_of_visible_joints_outside_the_teacher_field_is_counted(synth_root):
    """stat/joints_outside_field: visible joints that fall where the field is 0 (those the unmasked loss
    would teach as background), over the visible joints inside the student's view."""
    from collapse.methods.base import Method
    _, ctx, unl = _setup(synth_root, name="easy_hard")
    n = len(unl["crops"])
    h, w = ctx.batches.heatmap_hw
    sv = View(None, unl["base"], torch.zeros(n, dtype=torch.bool))  # the plain view: store -> input
    field = torch.ones(n, 1, h, w)
    field[..., : w // 2] = 0  # the teacher "saw" only the right half
    kp = unl["keypoints"].clone()
    kp[..., 2] = 2
    kp[:, :4, :2] = torch.tensor([4.0, 30.0])                 # four joints per crop on the left half ...
    kp[:, 4:, :2] = torch.tensor([40.0, 30.0])                # ... thirteen on the right half
    kp[:, :4] += torch.cat([-unl["base"][:, None, :2, 2], torch.zeros(n, 1, 1)], -1)  # in store coordinates
    kp[:, 4:] += torch.cat([-unl["base"][:, None, :2, 2], torch.zeros(n, 1, 1)], -1)
    kp[:, 16, 2] = 0                                           # one invisible joint does not count
    stats = Method.outside_share(ctx, dict(unl, keypoints=kp), sv, field)
    assert float(stats["stat/joints_outside_field"]) == pytest.approx(4 / 16)
    assert float(stats["stat/outside_field"]) == pytest.approx(0.5)


def test_compiling_covers_every_pass_of_a_step(synth_root, tmp_path, monkeypatch):
    """train.compile: every forward pass a method makes goes through a torch.compile'd callable (ctx.forward),
    the unsupervised ones and the teacher's too, not only the supervised pass."""
    from collapse import config
    from collapse.methods import context
    from collapse.train import Trainer
    compiled, calls = [], []

    def fake_compile(module, mode):
        compiled.append((module, mode))
        return lambda x: calls.append(module) or module(x)
    monkeypatch.setattr(context.torch, "compile", fake_compile)
    for name, passes in (("dual", 2 + 2 + 2), ("mean_teacher", 1 + 1 + 1), ("consistency", 1 + 2)):
        compiled.clear(), calls.clear()
        cfg = config.load("configs/demo.yaml", [f"data.root={synth_root}", "model.width=8", f"method.name={name}",
                                                "train.compile=true", "train.compile_mode=reduce-overhead"])
        tr = Trainer(cfg, str(tmp_path / name), progress=False)
        seen = []
        for net in {id(n): n for n in tr.nets + tr.ctx.teachers}.values():  # dual's teachers are its nets
            net.register_forward_hook(lambda m, i, o: seen.append(m))
        tr.train_step()
        assert len(calls) == len(seen) == passes, name  # every pass was a compiled one
        assert {m for m, _ in compiled} >= set(tr.nets) and {mode for _, mode in compiled} == {"reduce-overhead"}
