"""The consistency family the paper shows collapsing, each a few lines over predictions.

Every teacher-student recipe here carries the teacher's heatmap into the student's view together with the
teacher's field of view, and pixels outside that field carry no loss (see Batches.transport)."""
import copy
from dataclasses import dataclass

import torch

from .base import CutoutSettings, Method, ViewSettings, heatmap_mse, one_of
from ..errors import ConfigError
from .registry import register


@register("consistency")
class Consistency(Method):
    """Naive consistency: two views of equal strength, the loss between them with gradient through both,
    so both predictions are pulled toward their middle (and, with background dominant, toward zero)."""
    Settings = ViewSettings
    uses_unlabeled = True
    order, cost = 1, 2.4

    def unsupervised(self, ctx, unl):
        a = self.student_view(ctx, unl, "easy")
        b = self.student_view(ctx, unl, "fresh")
        pa, pb = ctx.forward(a.image), ctx.forward(b.image)
        moved, field = ctx.batches.transport(pa, a.A, a.flip, b.A, b.flip)  # gradient through both
        return {"unsup": heatmap_mse(pb, moved, field), **self.outside_share(ctx, unl, b, field)}


class TeacherStudent(Method):
    """A teacher predicts on one view without gradient; its heatmap, carried into the student's view,
    is the student's target. Subclasses choose the teacher and weigh the loss."""
    Settings = CutoutSettings
    uses_unlabeled = True
    views = ("easy", "fresh")
    cost = 2.0

    def weight(self, confidence, target):
        """Loss weights beyond the field mask, broadcastable to (B,J,H,W), or None. confidence: the
        teacher's per-joint peak (B,J), in the student's channel order like the target."""
        return None

    def unsupervised(self, ctx, unl):
        tv = ctx.batches.view(unl, self.views[0])
        with torch.no_grad():
            heat = ctx.forward(tv.image, teacher=True)
        sv = self.student_view(ctx, unl, self.views[1])
        x = self.cut(ctx, sv.image, heat, tv, sv)
        target, field = self.target(ctx, heat, tv, sv)
        # joint channels are swapped where the views differ by a mirror: per-joint facts follow the target
        confidence = ctx.batches.reorder(heat.amax((2, 3)), tv, sv)
        extra = self.weight(confidence, target)
        pred = ctx.forward(x)
        return {"unsup": heatmap_mse(pred, target, field if extra is None else field * extra),
                **self.outside_share(ctx, unl, sv, field)}


@dataclass
class MeanTeacherSettings(CutoutSettings):
    ema: float = 0.99                # teacher <- ema * teacher + (1 - ema) * student (B1 0.99, B2 0.999)
    teacher: str = "reference"       # reference: Tarvainen & Valpola's mean teacher (train mode, parameters averaged,
                                     # decay warmed up: min(1 - 1/(t+1), ema)) | eval: eval mode, BatchNorm statistics
                                     # averaged too, no warm-up (this toolkit's before 2026-12)
    ema_buffers: str = "average"     # teacher eval: BatchNorm statistics averaged like the weights | copy (the student's)

    def check(self, cfg):
        super().check(cfg)
        if not 0 <= self.ema < 1:
            raise ConfigError(f"config key 'method.ema' must be in [0, 1), got {self.ema}")
        one_of("teacher", self.teacher, ("reference", "eval"))
        one_of("ema_buffers", self.ema_buffers, ("average", "copy"))


@register("mean_teacher")
class MeanTeacher(TeacherStudent):
    """EMA teacher (the paper's B1/B2 with ema 0.99/0.999). `teacher: reference` (default) is the reference
    mean teacher: in train mode (its BatchNorm normalises with batch statistics and keeps its own running
    ones), parameters averaged, the decay warmed up as min(1 - 1/(t+1), ema). `teacher: eval` runs it in eval
    mode with its BatchNorm statistics averaged like its weights, no warm-up (`ema_buffers: copy` copies the
    student's instead: this toolkit's behaviour before 2026-11)."""
    Settings = MeanTeacherSettings
    order = 2

    @classmethod
    def variant(cls, s):
        if s.get("teacher", "eval") == "eval":  # runs made before the key existed ran an eval-mode teacher
            return f" (ema {s.get('ema')}, eval teacher" + (", student's BN)" if s.get("ema_buffers") == "copy" else ")")
        return f" (ema {s.get('ema')})"

    def setup(self, ctx):
        ema = copy.deepcopy(ctx.nets[0]).train(self.cfg.teacher == "reference")
        for p in ema.parameters():
            p.requires_grad_(False)
        ctx.teachers = [ema]

    def decay(self, step):
        """The EMA decay at `step` (0-based within the run): warmed up in the reference recipe."""
        return min(1 - 1 / (step + 1), self.cfg.ema) if self.cfg.teacher == "reference" else self.cfg.ema

    @torch.no_grad()
    def after_step(self, ctx):
        a = self.decay(ctx.step)
        for t, s in zip(ctx.teachers[0].parameters(), ctx.nets[0].parameters()):
            t.lerp_(s, 1 - a)
        if self.cfg.teacher == "reference":  # its BatchNorm statistics are its own, kept by its train-mode passes
            return
        for t, s in zip(ctx.teachers[0].buffers(), ctx.nets[0].buffers()):
            if self.cfg.ema_buffers == "copy" or not t.is_floating_point():  # num_batches_tracked: a count
                t.copy_(s)
            else:
                t.lerp_(s, 1 - a)


@dataclass
class ThresholdSettings(CutoutSettings):
    tau: float = 0.6                 # joints whose teacher peak is below tau carry no loss (A1-A4: 0.2 .. 0.8)


@register("threshold")
class Threshold(TeacherStudent):
    """Teacher-confidence mask: joints whose teacher peak is below tau carry no loss (A1-A4)."""
    Settings = ThresholdSettings
    order = 3

    @classmethod
    def variant(cls, s):
        return f" (tau {s.get('tau')})"

    def weight(self, confidence, target):
        return (confidence >= self.cfg.tau).float()[..., None, None]


@dataclass
class ReweightSettings(CutoutSettings):
    fg_threshold: float = 0.1        # target pixels above this are foreground ...
    fg_weight: float = 10.0          # ... and weigh this much more than background


@register("reweight")
class Reweight(TeacherStudent):
    """Class re-weighting: foreground pixels of the target weigh fg_weight, background 1 (C)."""
    Settings = ReweightSettings
    order = 4

    def weight(self, confidence, target):
        return 1 + (self.cfg.fg_weight - 1) * (target > self.cfg.fg_threshold).float()


@dataclass
class PairSettings(CutoutSettings):
    pair: str = "easy_hard"          # teacher view _ student view; D1-D3: easy_easy hard_hard hard_easy

    def check(self, cfg):
        super().check(cfg)
        one_of("pair", self.pair, ("easy_hard", "easy_easy", "hard_hard", "hard_easy"))


@register("easy_hard")
class EasyHard(TeacherStudent):
    """Single network, its own easy-view prediction teaches its hard view (PoseCons). `pair` gives the
    paper's D1-D3 ablations: easy_easy, hard_hard, hard_easy (teacher view _ student view)."""
    Settings = PairSettings
    order = 5

    @classmethod
    def variant(cls, s):
        return "" if s.get("pair") in (None, "easy_hard") else f" ({s['pair']})"

    @property
    def views(self):
        t, s = self.cfg.pair.split("_")
        return t, ("fresh" if s == t == "easy" else s)


@register("dual")
class Dual(Method):
    """Two networks; each one's easy-view prediction teaches the other's hard view (PoseDual). One extra
    affine per sample is shared by both hard views; joint cutout masks where the *other* net sees joints."""
    Settings = CutoutSettings
    nets = 2
    uses_unlabeled = True
    default_sup_weight = 0.5
    order, cost = 6, 4.0

    def unsupervised(self, ctx, unl):
        tv = ctx.batches.view(unl, "easy")
        with torch.no_grad():
            heats = [ctx.forward(tv.image, i) for i in range(self.nets)]
        extra = ctx.batches.views.extra(len(tv.image), tv.image.device)
        terms = {}
        for i in range(self.nets):
            other = heats[1 - i]
            sv = self.student_view(ctx, unl, "hard", extra)
            x = self.cut(ctx, sv.image, other, tv, sv)
            target, field = self.target(ctx, other, tv, sv)
            terms[f"unsup{i}"] = heatmap_mse(ctx.forward(x, i), target, field)
        return {**terms, **self.outside_share(ctx, unl, sv, field)}
