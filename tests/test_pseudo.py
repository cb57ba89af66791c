"""The pseudo-label family (PseudoPose, DataDistill, ST, ST++) and GuidedMix."""
import json
import os

import numpy as np
import pytest
import torch

from collapse.cli import main
from collapse.methods.mix import pair_labeled, recover
from collapse.methods.pseudo import agreement, label_pool
from test_methods import _grad_norm, _setup


def _oracle(batches, pool, jitter=None):
    """A perfect teacher: for each view it predicts the ground-truth heatmaps of that view (optionally
    with its keypoints moved by `jitter` (N,J,2) store pixels first)."""
    def predict(x, rows, A, flip):
        kps = pool.keypoints[rows].clone()
        if jitter is not None:
            kps[..., :2] += jitter[rows]
        return batches.targets(A, flip, kps)[0]
    return predict


@pytest.mark.parametrize("ensemble", ["none", "transforms"])
def test_pseudo_labels_of_a_perfect_teacher_reproduce_the_ground_truth(synth_root, ensemble):
    _, ctx, _ = _setup(synth_root, name="pseudo_label")
    b = ctx.batches
    pool = b.unlabeled_pool
    kp, conf = label_pool(_oracle(b, pool), b, pool, ensemble)
    gt = pool.keypoints
    h, w = pool.store.store_hw
    # visible joints well inside the crop (a heatmap clips what leaves the view)
    inside = (gt[..., 2] > 0) & (gt[..., 0] > 12) & (gt[..., 0] < w - 12) & (gt[..., 1] > 12) & (gt[..., 1] < h - 12)
    assert inside.sum() > 100
    err = (kp - gt[..., :2]).norm(dim=-1)[inside]
    assert err.max() < 1.5 and err.mean() < 0.8   # within the decoder's sub-pixel step (stride 2)
    assert conf[inside].min() > 0.5 and conf[gt[..., 2] == 0].max() < 1e-6


def test_st_plus_plus_score_ranks_clean_crops_above_corrupted_ones(synth_root):
    _, ctx, _ = _setup(synth_root, name="self_training", st_plus=True)
    b = ctx.batches
    pool = b.unlabeled_pool
    n = len(pool)
    corrupted = torch.zeros(n, dtype=torch.bool)
    corrupted[torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 2]] = True
    g = torch.Generator().manual_seed(2)
    final_kp, final_conf = label_pool(_oracle(b, pool), b, pool)
    area = torch.as_tensor(pool.store.meta["area"][pool.rows]).float() * torch.linalg.det(
        torch.as_tensor(pool.store.meta["crop"][pool.rows])[:, :2, :2]).float()
    scores = 0
    for k in range(2):  # two earlier checkpoints: close to the final one on clean crops, far on corrupted ones
        noise = torch.randn(n, 17, 2, generator=g) * torch.where(corrupted, 8.0, 0.5)[:, None, None]
        kp, _ = label_pool(_oracle(b, pool, noise), b, pool)
        scores = scores + agreement(b.skeleton, kp, final_kp, final_conf, area) / 2
    top = torch.argsort(scores, descending=True)[: n // 2]
    assert (~corrupted[top]).float().mean() > 0.9
    assert scores[~corrupted].mean() > scores[corrupted].mean() + 0.3


def test_guided_mix_recovery_is_exact_for_an_exact_network():
    g = torch.Generator().manual_seed(0)
    h_u, g_l = torch.rand(4, 17, 8, 6, generator=g), torch.rand(4, 17, 8, 6, generator=g)
    lam = torch.tensor([0.0, 0.1, 0.3, 0.5])
    mixed = lam.view(-1, 1, 1, 1) * g_l + (1 - lam.view(-1, 1, 1, 1)) * h_u   # what a linear, exact net gives
    assert torch.allclose(recover(mixed, g_l, lam), h_u, atol=1e-6)
    x_l = torch.rand(5, 3, 16, 12, generator=g)
    x_u = x_l[[3, 0, 4]] + 0.01 * torch.rand(3, 3, 16, 12, generator=g)
    assert pair_labeled(x_l, x_u, "nearest", g).tolist() == [3, 0, 4]


@pytest.mark.parametrize("direction", ["clean_teaches_mixed", "mixed_teaches_clean"])
def test_guided_mix_gradient_reaches_only_the_student_side(synth_root, direction):
    m, ctx, unl = _setup(synth_root, name="guided_mix", mix_direction=direction)
    lab = ctx.batches.labeled(4)
    net = ctx.nets[0]
    outs = []
    hook = net.register_forward_hook(lambda mod, i, o: outs.append(o))
    terms = m.losses(ctx, lab, unl)
    hook.remove()
    for o in outs:
        if o.requires_grad:
            o.retain_grad()
    terms["unsup"].backward()
    # forwards: supervised, then the teacher (no grad) and the student (grad), in the direction's order
    teacher, student = outs[1], outs[2]
    assert not teacher.requires_grad and student.grad is not None and student.grad.abs().sum() > 0
    assert _grad_norm(net) > 0


@pytest.mark.parametrize("name, extra", [("pseudo_label", {}), ("self_training", dict(st_plus=True))])
def test_pseudo_label_student_learns_from_fixed_labels(synth_root, name, extra):
    m, ctx, unl = _setup(synth_root, name=name, **extra)
    assert m.unsupervised(ctx, unl) == {}          # the teacher stage: labels only
    kp, conf = label_pool(_oracle(ctx.batches, ctx.batches.unlabeled_pool), ctx.batches, ctx.batches.unlabeled_pool)
    m.labels = (kp, conf)
    loss = m.unsupervised(ctx, unl)["unsup"]
    assert not kp.requires_grad and loss > 0
    loss.backward()
    assert _grad_norm(ctx.nets[0]) > 0


def test_staged_runs_write_their_artefacts_and_resume(synth_root, tmp_path):
    out = str(tmp_path / "st")
    args = ["train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=self_training", "method.st_plus=true",
            "model.width=8", "train.steps=24", "train.eval_every=12", "train.checkpoint_every=4", "train.probe_every=6",
            "train.threads=1", "train.device=cpu", "--out", out, "--quiet"]
    assert main(args) == 0
    labels = np.load(os.path.join(out, "pseudo_labels.npz"))
    rel = np.load(os.path.join(out, "reliability.npz"))
    n = len(labels["pool_rows"])
    assert labels["keypoints"].shape == (n, 17, 2) and str(labels["stage"]) == "all"
    assert len(rel["selected"]) == int(round(n / 2)) and rel["score"].shape == (n,)
    ref = json.load(open(os.path.join(out, "manifest.json")))["final"]
    # the same run stopped at step 14 (between ST++'s two student stages) and resumed ends the same
    from collapse import config
    from collapse.train import Trainer, train
    cfg = config.load("configs/demo.yaml", [a for a in args if "=" in a])
    out2 = str(tmp_path / "resumed")
    first = Trainer(cfg, out2, progress=False)
    while first.step < 14:
        first.train_step()
    first.save()
    assert first.batches.unlabeled_subset is not None  # training on the reliable half
    del first
    assert train(cfg, out2, progress=False)["final"] == ref
