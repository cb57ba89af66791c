import math
from dataclasses import dataclass

from ..augment import inverse, joint_cutout, randaugment, swap_flipped, transform_points
from ..errors import ConfigError
from ..heatmaps import decode


STAT = "stat/"  # a term named stat/... is a statistic (logged, never part of the loss)


def is_loss(name):
    return not name.startswith(STAT)


def heatmap_mse(pred, target, weight=None):
    """0.5 * mean squared error over (B,J,H,W); weight is (B,J) per joint, or per pixel (B,J,H,W) or (B,1,H,W).
    A weighted-out pixel still counts in the mean: a mask removes its loss and leaves the others' unchanged."""
    diff = (pred - target) ** 2
    if weight is not None:
        diff = diff * (weight[..., None, None] if weight.dim() == 2 else weight)
    return 0.5 * diff.mean()


def one_of(key, value, allowed):
    if value not in allowed:
        raise ConfigError(f"config key 'method.{key}' must be {' or '.join(allowed)}, got '{value}'")


def at_least(key, value, low=0):
    if value < low:
        raise ConfigError(f"config key 'method.{key}' must be >= {low}, got {value}")


# -- settings: each method reads its own dataclass (the `method:` mapping of a config); a run's id hashes
# -- only these, so a setting a method does not read cannot tell two of its runs apart
@dataclass
class Settings:
    """What every method reads."""
    name: str = "supervised"
    sup_weight: float = -1.0         # supervised weight per net (-1: the method's default, 0.5 per net for dual)

    def check(self, cfg):
        """Raise ConfigError for a bad value; `cfg` is the whole config (a setting may depend on train.*)."""


@dataclass
class UnlabeledSettings(Settings):
    """Every method that learns from unlabeled crops."""
    unsup_weight: float = 1.0
    rampup: int = 0                  # steps of sigmoid ramp-up of unsup_weight (0 = constant)

    def check(self, cfg):
        at_least("unsup_weight", self.unsup_weight)
        at_least("rampup", self.rampup)


@dataclass
class ViewSettings(UnlabeledSettings):
    """Methods whose student sees an augmented view: photometric RandAugment on its input optional."""
    randaugment: bool = False
    ra_ops: int = 2
    ra_magnitude: int = 20


@dataclass
class CutoutSettings(ViewSettings):
    """Teacher-student methods: joint cutout where the teacher sees joints optional."""
    joint_cutout: int = 0            # patches around this many teacher-predicted joints (0 = off; 5 in the paper)

    def check(self, cfg):
        super().check(cfg)
        at_least("joint_cutout", self.joint_cutout)


class Method:
    """Base recipe: labeled loss only. Subclasses add `unsupervised` terms, and may declare their own
    `Settings` dataclass, `order` (where their rows sit in tables and figures), `cost` (time per step
    relative to supervised, for scheduling) and `label(settings)` (what tells their variants apart)."""
    Settings = Settings
    nets = 1
    uses_unlabeled = False
    default_sup_weight = 1.0
    order = 0
    cost = 1.0

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def net_count(cls, s):
        """How many networks a run of settings `s` (a mapping or the settings dataclass) trains."""
        return cls.nets

    @staticmethod
    def warm_stage(i):
        """In a warm-started grid, which supervised stage net i starts from (0: the seed's, 1: seed + 1000's)."""
        return i

    @classmethod
    def label(cls, s):
        """A readable name of a variant from its settings `s` (a mapping of method setting -> value, as a
        run's config.yaml holds them): the method's name and what its own settings make of it."""
        return cls.name + cls.variant(s) + shared_label(s)

    @classmethod
    def variant(cls, s):
        return ""

    @property
    def sup_weight(self):
        return self.default_sup_weight if self.cfg.sup_weight < 0 else self.cfg.sup_weight

    def unsup_weight(self, step):
        """unsup_weight with the usual sigmoid ramp-up exp(-5 (1 - t)^2) over `rampup` steps."""
        w, r = self.cfg.unsup_weight, self.cfg.rampup
        if r <= 0 or step >= r:
            return w
        return w * math.exp(-5 * (1 - step / r) ** 2)

    def setup(self, ctx):
        pass

    def losses(self, ctx, lab, unl):
        """Every weighted loss term of one step: the supervised one per net, then the method's own.
        lab: {"x", "target", "weight"}; unl: the unlabeled batch or None."""
        terms = {}
        for i in range(self.nets):
            sup = heatmap_mse(ctx.forward(lab["x"], i), lab["target"], lab["weight"])
            terms[f"sup{i}" if self.nets > 1 else "sup"] = self.sup_weight * sup
        if unl is not None:
            w = self.unsup_weight(ctx.step)
            terms.update({k: w * v if is_loss(k) else v for k, v in self.unsupervised(ctx, unl).items()})
        return terms

    def unsupervised(self, ctx, unl):
        return {}

    def after_step(self, ctx):
        pass

    def stage_steps(self):
        """The step counts after which after_step changes the recipe's stage (labels a pool, restarts a
        net): the only steps allowed to wait for the device (docs/speed_and_gpus.md, "What may wait")."""
        return ()

    def state_dict(self):
        """What a staged recipe must carry across a checkpoint (pseudo-labels, stage...)."""
        return {}

    def load_state_dict(self, ctx, state):
        pass

    # -- shared pieces of the recipes ----------------------------------------------------------
    def student_view(self, ctx, unl, kind, extra=None):
        ra = None
        if self.cfg.randaugment:
            ra = lambda c: randaugment(c, ctx.batches.draws, self.cfg.ra_ops, self.cfg.ra_magnitude)
        return ctx.batches.view(unl, kind, ra, extra)

    def cut(self, ctx, x, teacher_heat, tv, sv):
        """Joint cutout: blank patches of the student's input where the teacher (on view tv) sees joints."""
        if not self.cfg.joint_cutout:
            return x
        xy, _ = decode(teacher_heat.detach().float())
        pts = transform_points(sv.A @ inverse(tv.A), xy * ctx.batches.stride)
        return joint_cutout(x, swap_flipped(pts, tv.flip != sv.flip), self.cfg.joint_cutout, ctx.batches.draws)

    @staticmethod
    def target(ctx, teacher_heat, tv, sv):
        """(target, field): the teacher's heatmap (on view tv) carried into the student's view sv with the
        gradient stopped, and the teacher's field of view there (0 where it saw nothing: no loss)."""
        return ctx.batches.transport(teacher_heat.detach().float(), tv.A, tv.flip, sv.A, sv.flip)

    @staticmethod
    def outside_share(ctx, unl, sv, field):
        """Statistics of the field mask: the share of student pixels outside the teacher's field (they carry
        no loss), and the share of visible joints that lie there (the joints the unmasked loss would teach
        as background; ground truth read for this statistic only, never for a loss)."""
        pixels = {STAT + "outside_field": 1 - field.detach().mean()}
        if "keypoints" not in unl:  # not a pose batch (the 2-D toy)
            return pixels
        b = ctx.batches
        kp = unl["keypoints"]
        cell = (transform_points(sv.A, kp[..., :2].to(sv.A.dtype)) / b.stride).floor().long()  # heatmap pixel
        h, w = b.heatmap_hw
        seen = b.skeleton.labeled(kp[..., 2]) & (cell[..., 0] >= 0) & (cell[..., 0] < w) & (cell[..., 1] >= 0) & (cell[..., 1] < h)
        flat = field.detach()[:, 0].flatten(1)
        at = flat.gather(1, (cell[..., 1].clamp(0, h - 1) * w + cell[..., 0].clamp(0, w - 1)))
        lost = ((at == 0) & seen).sum() / seen.sum().clamp(min=1)
        return {**pixels, STAT + "joints_outside_field": lost}


def shared_label(s):
    """The label's part from the shared settings: a weight or ratio other than the method's own, JC, RA."""
    out = ""
    if s.get("name") != "supervised" and s.get("unsup_weight") not in (None, 1.0):
        out += f" (w {s['unsup_weight']:g})"
    sup = s.get("sup_weight")
    if sup is not None and sup >= 0:  # -1: the method's default ratio
        out += f" (sup {sup:g})"
    if s.get("joint_cutout"):
        out += f" + JC{s['joint_cutout']}"
    if s.get("randaugment"):
        out += " + RA"
    return out
