"""The pseudo-label family, adapted to heatmaps: PseudoPose, DataDistill, ST and ST++.

A staged recipe inside the one training loop: for the first `teacher_steps` steps (default a third of
the run) the net trains on labels only; then it labels every unlabeled crop once (hard keypoints from
the argmax, optionally averaged over transforms first), is re-initialised with a fresh optimizer state
(a fresh student), and trains on labeled + pseudo-labeled crops, whose targets are Gaussians
re-rendered at the pseudo keypoints in each view (not the teacher's raw heatmaps, whose regression
drifts toward background: the collapse mode this toolkit studies). Joints whose teacher confidence
is below `pl_threshold` carry no loss. Pseudo-labels, reliability scores and the selection are kept
in the run folder (`pseudo_labels.npz`, `reliability.npz`) and in the checkpoint, so stages resume.
"""
import copy
from dataclasses import dataclass

import numpy as np
import torch

from ..augment import about_centre, normalise, strong_photometric, transform_points, warp
from ..errors import ConfigError
from ..heatmaps import CONFIDENT, decode
from .base import Method, UnlabeledSettings, at_least, heatmap_mse, one_of
from .registry import register



def _views(ensemble, n, hw, device):
    """(E, flip) view matrices about the crop centre: the plain view, or the plain view, its mirror and
    two scales (0.8, 1.2) with their mirrors (DataDistill's transform ensemble; ST's test-time augmentation)."""
    if ensemble == "none":
        specs = [(1.0, False)]
    else:
        specs = [(s, f) for s in (1.0, 0.8, 1.2) for f in (False, True)]
    out = []
    for scale, flip in specs:
        fl = torch.full((n,), flip, dtype=torch.bool, device=device)
        out.append((about_centre(torch.zeros(n, device=device), torch.full((n,), scale, device=device), fl, hw), fl))
    return out


@torch.no_grad()
def label_pool(predict, batches, pool, ensemble="none", chunk=512):
    """Hard pseudo-labels for every crop of `pool`: keypoints (N,J,2) in the store frame and confidences
    (N,J), from heatmaps averaged over the ensemble's views after carrying each back to the plain view.
    predict(x, rows, A, flip) -> heatmaps: what the teacher says about a view (`net_predict(net)`)."""
    coords, confs = [], []
    for a in range(0, len(pool), chunk):
        idx = torch.arange(a, min(a + chunk, len(pool)))
        crops, _ = pool.fetch(idx)
        img = normalise(crops)
        base = batches.base(len(idx), pool)
        plain = torch.zeros(len(idx), dtype=torch.bool, device=base.device)
        views = _views(ensemble, len(idx), batches.input_hw, base.device)
        total = 0
        for E, flip in views:
            A = E @ base
            heat = predict(warp(img, A, batches.input_hw), idx, A, flip).float()
            total = total + batches.transport(heat, A, flip, base, plain)[0]
        xy, conf = decode(total / len(views))
        coords.append(transform_points(torch.linalg.inv(base), xy * batches.stride))
        confs.append(conf)
    return torch.cat(coords), torch.cat(confs)


def net_predict(ctx, net):
    """A network as a teacher for label_pool: its eval-mode prediction of each view (ctx.predict)."""
    return lambda x, *_: ctx.predict(net, x)


def agreement(skeleton, kp_a, kp_final, conf_final, area):
    """ST++'s reliability score for pose: OKS between a checkpoint's keypoints and the final checkpoint's,
    over the joints the final one is confident about (> CONFIDENT); s^2 = the instance area (store frame)."""
    oks = skeleton.oks(((kp_a - kp_final) ** 2).sum(-1), area[:, None])
    gate = (conf_final > CONFIDENT).float()
    return (oks * gate).sum(1) / gate.sum(1).clamp(min=1)


@dataclass
class PseudoLabelSettings(UnlabeledSettings):
    teacher_steps: int = 0           # steps of the supervised teacher stage (0: a third of train.steps)
    ensemble: str = "none"           # pseudo-labels from: none (one view) | transforms (flips x scales: DataDistill, ST's TTA)
    pl_threshold: float = 0.2        # pseudo-labeled joints below this teacher confidence carry no loss

    def check(self, cfg):
        super().check(cfg)
        at_least("teacher_steps", self.teacher_steps)
        if self.teacher_steps >= cfg.train.steps:
            raise ConfigError(f"config key 'method.teacher_steps' must be in [0, train.steps), got {self.teacher_steps}")
        one_of("ensemble", self.ensemble, ("none", "transforms"))


@dataclass
class SelfTrainingSettings(PseudoLabelSettings):
    st_plus: bool = False            # ST++ reliability selection (checkpoints at 1/3, 2/3, end)
    select_ratio: float = 0.5        # ST++: share of unlabeled crops trained on first

    def check(self, cfg):
        super().check(cfg)
        if not 0 < self.select_ratio <= 1:
            raise ConfigError(f"config key 'method.select_ratio' must be in (0, 1], got {self.select_ratio}")


class PseudoLabelBase(Method):
    Settings = PseudoLabelSettings
    uses_unlabeled = True
    cost = 2.0

    def setup(self, ctx):
        self.boundary = self.cfg.teacher_steps or max(1, ctx.steps // 3)
        self.labels = None      # (keypoints, confidences) over the unlabeled pool, once labeled
        self.stage = "teacher"

    def photometric(self, ctx):
        return None

    def stage_steps(self):
        return (self.boundary,)

    def unsupervised(self, ctx, unl):
        if self.labels is None:
            return {}  # the supervised (teacher) stage
        kp, conf = self.labels
        idx = unl["index"].to(kp.device)
        v = ctx.batches.view(unl, "easy", self.photometric(ctx))
        pseudo = torch.cat([kp[idx], (conf[idx] >= self.cfg.pl_threshold).float()[..., None]], -1)
        target, weight = ctx.batches.targets(v.A, v.flip, pseudo)
        # the teacher labeled the plain view: where the student's view shows what it never saw, no loss
        field = ctx.batches.field(unl["base"], v.A)
        return {"unsup": heatmap_mse(ctx.forward(v.image), target, weight[..., None, None] * field),
                **self.outside_share(ctx, unl, v, field)}

    def relabel(self, ctx, net, rows=None):
        """Pseudo-label the pool (or only `rows` of it) with `net`, keeping the other rows' labels."""
        pool = ctx.batches.unlabeled_pool
        kp, conf = label_pool(net_predict(ctx, net), ctx.batches, pool, self.cfg.ensemble)
        if rows is not None and self.labels is not None:
            old_kp, old_conf = self.labels
            keep = torch.ones(len(pool), dtype=torch.bool, device=kp.device)
            keep[rows] = False
            kp, conf = torch.where(keep[:, None, None], old_kp, kp), torch.where(keep[:, None], old_conf, conf)
        self.labels = (kp, conf)
        ctx.save_artifact("pseudo_labels.npz", keypoints=kp.cpu().numpy(), confidence=conf.cpu().numpy(),
                   pool_rows=pool.rows, stage=np.array(self.stage), step=np.array(ctx.step + 1))

    def state_dict(self):
        return dict(labels=self.labels, stage=self.stage)

    def load_state_dict(self, ctx, state):
        self.labels, self.stage = state["labels"], state["stage"]


@register("pseudo_label")
class PseudoLabel(PseudoLabelBase):
    """PseudoPose: a supervised teacher labels the unlabeled set once, a fresh student trains on
    labeled + pseudo-labeled crops. With `ensemble: transforms` it is DataDistill (labels from the
    teacher's heatmaps averaged over flips and scales)."""
    order = 7

    @classmethod
    def variant(cls, s):
        return " (DataDistill)" if s.get("ensemble") == "transforms" else " (PseudoPose)"

    def after_step(self, ctx):
        if ctx.step + 1 == self.boundary:
            self.stage = "student"
            self.relabel(ctx, ctx.nets[0])
            ctx.restart(0)


@register("self_training")
class SelfTraining(PseudoLabelBase):
    """ST: pseudo-label all unlabeled crops, retrain a fresh net with strong augmentation (colour jitter,
    grayscale, blur, cutout) on them. ST++ (`st_plus`): keep the teacher at 1/3, 2/3 and the end of its
    stage, rank crops by the agreement of the earlier two with the final one (confidence-gated OKS),
    train first on the top `select_ratio`, re-label the rest with that model, then train on all."""
    Settings = SelfTrainingSettings
    order = 8

    @classmethod
    def variant(cls, s):
        return " (ST++)" if s.get("st_plus") else " (ST)"

    def setup(self, ctx):
        super().setup(ctx)
        self.snapshots = []
        self.second = self.boundary + max(1, (ctx.steps - self.boundary) // 2)

    def photometric(self, ctx):
        return lambda crops: strong_photometric(crops, ctx.batches.draws)

    def stage_steps(self):
        return (self.boundary, self.second) if self.cfg.st_plus else (self.boundary,)

    def after_step(self, ctx):
        done = ctx.step + 1
        net = ctx.nets[0]
        if self.cfg.st_plus and done in (max(1, self.boundary // 3), max(1, 2 * self.boundary // 3)):
            self.snapshots.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        if done == self.boundary:
            self.stage = "reliable" if self.cfg.st_plus else "student"
            self.relabel(ctx, net)
            if self.cfg.st_plus:
                self.select(ctx, net)
            ctx.restart(0)
        elif self.cfg.st_plus and done == self.second:
            self.stage = "all"
            rest = torch.as_tensor(np.setdiff1d(np.arange(len(ctx.batches.unlabeled_pool)),
                                                ctx.batches.unlabeled_subset.cpu().numpy()))
            self.relabel(ctx, net, rest)
            ctx.batches.unlabeled_subset = None
            ctx.restart(0)

    def select(self, ctx, final_net):
        """Score every unlabeled crop by checkpoint agreement; train on the top select_ratio first."""
        pool, batches = ctx.batches.unlabeled_pool, ctx.batches
        final_kp, final_conf = label_pool(net_predict(ctx, final_net), batches, pool)
        area = pool.areas().to(final_kp)
        probe = copy.deepcopy(final_net)
        scores = 0
        for snap in self.snapshots:
            probe.load_state_dict(snap)
            kp, _ = label_pool(net_predict(ctx, probe), batches, pool)
            scores = scores + agreement(batches.skeleton, kp, final_kp, final_conf, area)
        scores = scores / max(len(self.snapshots), 1)
        order = torch.argsort(scores, descending=True, stable=True)
        chosen = order[: max(1, int(round(self.cfg.select_ratio * len(pool))))]
        batches.unlabeled_subset = chosen.to(batches.draws.device)  # where the indices are drawn: no copy per step
        self.snapshots = []  # no longer needed; keeps checkpoints small
        ctx.save_artifact("reliability.npz", score=scores.cpu().numpy(), selected=chosen.cpu().numpy(),
                   pool_rows=pool.rows)

    def state_dict(self):
        return dict(super().state_dict(), snapshots=self.snapshots)

    def load_state_dict(self, ctx, state):
        super().load_state_dict(ctx, state)
        self.snapshots = state["snapshots"]
