"""The field's later recipes that beat PoseDual on COCO, restated for heatmaps from their released code
(../shared/reference/later_recipes_multiaugs_sspcm.md): MultiAugs (Zhou et al. 2024) and SSPCM (Huang et
al., CVPR 2023). Both occlude an easy view (collapse/occlude.py) and then apply one extra affine per sample,
shared by every hard view of a step; the teacher's heatmap is carried once into that frame. The hard views
are resampled from the occluded easy view (as the released code does), so pixels outside the easy view
are the mean colour and carry no loss (outside the teacher's field)."""
import copy
import typing
from dataclasses import dataclass, field

import torch

from ..augment import View, warp
from ..heatmaps import decode
from ..occlude import PATHS, joint_cut_occlusion, occlude
from ..errors import ConfigError
from .base import Method, UnlabeledSettings, at_least, heatmap_mse, one_of
from .registry import register


def hard_views(ctx, tv, extra, images):
    """Easy-frame images (occluded copies of tv.image) through the shared extra affine -> Views."""
    A = extra @ tv.A
    return [View(warp(x, extra, ctx.batches.input_hw), A, tv.flip) for x in images]


def joints_of(ctx, heat):
    """A teacher's keypoints in its view's input pixels (where occlusions are placed)."""
    return decode(heat)[0] * ctx.batches.stride


@dataclass
class MultiAugsSettings(UnlabeledSettings):
    nets: int = 2                    # 2: each net's easy view teaches the other's paths (dual); 1: a net teaches itself
    paths: typing.List[str] = field(default_factory=lambda: ["joco", "jccm"])  # one hard view and loss per entry
    jc_count: int = 5                # joints blanked by T_JC (and T_JCCM)
    jo_pairs: int = 2                # patches pasted by T_JO (and T_JOCO)
    co_holes: int = 5                # random holes of T_CO (and T_JOCO)
    cm_holes: int = 2                # holes of T_CM (and T_JCCM) filled from another image
    mixup_alpha: float = 0.2         # T_MU: lambda ~ Beta(alpha, alpha), own weight 1 - lambda / 4

    def check(self, cfg):
        super().check(cfg)
        one_of("nets", str(self.nets), ("1", "2"))
        if not self.paths:
            raise ConfigError("config key 'method.paths' must name at least one path")
        for p in self.paths:
            one_of("paths", p, PATHS)
        for key in ("jc_count", "jo_pairs", "co_holes", "cm_holes"):
            at_least(key, getattr(self, key), 1)
        if self.mixup_alpha <= 0:
            raise ConfigError(f"config key 'method.mixup_alpha' must be positive, got {self.mixup_alpha}")


@register("multi_augs")
class MultiAugs(Method):
    """MultiAugs: several hard views of each unlabeled crop, one per augmentation path (default T_JOCO and
    T_JCCM, its COCO+wild and MPII+AIC recipe; its COCO-1K command uses jc, jo, joco, jccm), all taught by
    the same easy-view heatmap carried through the one shared affine; the paths' losses are summed, weight
    1 each (not averaged). Dual: each net's paths are occluded at its partner's keypoints and taught by its
    partner's heatmap (PoseDual's pairing), sup 0.5 per net; single: a net teaches itself (no gradient), sup 1."""
    Settings = MultiAugsSettings
    uses_unlabeled = True
    order = 7

    @classmethod
    def net_count(cls, s):
        return int(_get(s, "nets", 2))

    @classmethod
    def variant(cls, s):
        paths = _get(s, "paths", ["joco", "jccm"])
        if isinstance(paths, str):  # a results table's cell: the list as text
            paths = [p.strip(" '\"") for p in paths.strip("[]").split(",")]
        return f" ({'dual' if int(_get(s, 'nets', 2)) == 2 else 'single'}, {'+'.join(paths)})"

    @property
    def nets(self):
        return self.cfg.nets

    @property
    def default_sup_weight(self):
        return 0.5 if self.cfg.nets == 2 else 1.0

    cost = 6.0

    def unsupervised(self, ctx, unl):
        tv = ctx.batches.view(unl, "easy")
        with torch.no_grad():  # single: the net itself, in train mode, as PoseCons; dual: both nets
            heats = [ctx.forward(tv.image, i, teacher=self.nets == 1) for i in range(self.nets)]
        extra = ctx.batches.views.extra(len(tv.image), tv.image.device)  # one affine for every path and net
        draws = ctx.batches.draws
        terms = {}
        for i in range(self.nets):
            teacher = heats[(i + 1) % self.nets]
            joints = joints_of(ctx, teacher)
            views = hard_views(ctx, tv, extra, [occlude(p, tv.image, joints, draws, self.cfg) for p in self.cfg.paths])
            target, field_ = self.target(ctx, teacher, tv, views[0])  # one transport serves every path
            terms[f"unsup{i}" if self.nets > 1 else "unsup"] = sum(
                heatmap_mse(ctx.forward(v.image, i), target, field_) for v in views)
        return terms


@dataclass
class SSPCMSettings(UnlabeledSettings):
    jo_pairs: int = 2                # keypoint-perception Cut-Occlude patches per hard view (SSCO = T_JO)
    score_filter: float = 0.1        # a joint whose two teachers' mean peak is at most this carries no consistency loss
    snapshot_every: int = 0          # steps between refreshes of the teachers' earlier copies; 0: one pass over the
                                     # unlabeled pool (the code's "previous epoch")
    snapshot_bn: str = "batch"       # the earlier copies predict with batch statistics (train mode, as released) | running
    correction: str = "position"     # position: S's target from the closest pair across periods (SSPCM) | average:
                                     # the current teachers' plain average (an ablation: no earlier copies)

    def check(self, cfg):
        super().check(cfg)
        at_least("jo_pairs", self.jo_pairs, 1)
        at_least("snapshot_every", self.snapshot_every)
        one_of("snapshot_bn", self.snapshot_bn, ("batch", "running"))
        one_of("correction", self.correction, ("position", "average"))


@register("sspcm")
class SSPCM(Method):
    """SSPCM: two teachers T1, T2 trained as PoseDual (each's easy view teaches the other's hard view) and a
    student S that never teaches. S's target is corrected by position inconsistency: per image and joint,
    of the four pairs (T1 or its earlier copy, T2 or its earlier copy) the one whose argmaxes lie closest
    gives the average of its two heatmaps. Joints whose current teachers' mean peak is <= score_filter
    carry no consistency loss (the filter the released configs use; their distance filter is off). Each
    hard view is occluded by SSCO at keypoints: T1's at T2's, T2's at T1's, S's at the corrected target's.
    Nets: 0 = S (what this recipe is for; the analysis reads net 0), 1 = T1, 2 = T2; sup 0.5 each."""
    Settings = SSPCMSettings
    nets = 3
    uses_unlabeled = True
    default_sup_weight = 0.5
    order, cost = 7.5, 7.0

    @classmethod
    def variant(cls, s):
        return " (average target)" if _get(s, "correction", "position") == "average" else ""

    @staticmethod
    def warm_stage(i):
        return (0, 0, 1)[i]  # T1 and T2 start as PoseDual's two nets; S from T1's weights, as the released R18 runs

    def setup(self, ctx):
        self.period = self.cfg.snapshot_every or ctx.epoch
        self.earlier = [copy.deepcopy(ctx.nets[i]) for i in (1, 2)]  # at the start: the initial weights
        for net in self.earlier:
            net.requires_grad_(False)

    def after_step(self, ctx):
        if (ctx.step + 1) % self.period == 0:  # the teachers as they are now become the earlier ones
            for net, now in zip(self.earlier, ctx.nets[1:]):
                net.load_state_dict(now.state_dict())

    def state_dict(self):
        return dict(earlier=[n.state_dict() for n in self.earlier])

    def load_state_dict(self, ctx, state):
        for net, sd in zip(self.earlier, state["earlier"]):
            net.load_state_dict(sd)

    def corrected(self, h1, h2, p1, p2):
        """Per image and joint, the average heatmap of the closest-argmax pair among (h1, h2), (p1, h2),
        (h1, p2), (p1, p2) (ties: the first, the current pair) -> (target, which pair (B,J))."""
        cells = [decode(h)[0] for h in (h1, h2, p1, p2)]
        pairs = [(0, 1), (2, 1), (0, 3), (2, 3)]
        dist = torch.stack([(cells[a].floor() - cells[b].floor()).norm(dim=-1) for a, b in pairs])  # (4,B,J)
        which = dist.argmin(0)
        maps = torch.stack([h1, h2, p1, p2])
        first, second = 2 * (which % 2), 1 + 2 * (which // 2)  # the pairs' members, by arithmetic: no host copy
        pick = lambda k: maps.gather(0, k[None, ..., None, None].expand(1, *h1.shape))[0]
        return 0.5 * (pick(first) + pick(second)), which

    def unsupervised(self, ctx, unl):
        tv = ctx.batches.view(unl, "easy")
        with torch.no_grad():
            h1, h2 = ctx.forward(tv.image, 1), ctx.forward(tv.image, 2)
            if self.cfg.correction == "average":
                target_s, which = 0.5 * (h1 + h2), torch.zeros(h1.shape[:2], dtype=torch.long, device=h1.device)
            else:
                p1, p2 = (ctx.run(net, tv.image, train_mode=self.cfg.snapshot_bn == "batch") for net in self.earlier)
                target_s, which = self.corrected(h1, h2, p1, p2)
        keep = (((h1.amax((2, 3)) + h2.amax((2, 3))) / 2) > self.cfg.score_filter).float()  # (B,J)
        extra = ctx.batches.views.extra(len(tv.image), tv.image.device)
        draws = ctx.batches.draws
        places = [joints_of(ctx, target_s), joints_of(ctx, h2), joints_of(ctx, h1)]   # S's, T1's, T2's views
        views = hard_views(ctx, tv, extra, [joint_cut_occlusion(tv.image, p, draws, self.cfg.jo_pairs) for p in places])
        terms = {}
        for i, (v, teacher) in enumerate(zip(views, (target_s, h2, h1))):  # S, T1, T2: one frame, one field
            target, field_ = self.target(ctx, teacher, tv, v)
            terms[f"unsup{i}"] = heatmap_mse(ctx.forward(v.image, i), target, field_ * keep[..., None, None])
        terms["stat/kept"] = keep.mean()
        terms["stat/earlier_pair"] = (which != 0).float().mean()  # how often an earlier copy corrected the target
        return terms


def _get(s, key, default):
    return s.get(key, default) if isinstance(s, dict) else getattr(s, key, default)
