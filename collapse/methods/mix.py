"""GuidedMix for heatmaps: labeled/unlabeled mixing with the unlabeled target recovered from the mix."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Method, ViewSettings, heatmap_mse, one_of
from .registry import register


@dataclass
class GuidedMixSettings(ViewSettings):
    mix_max: float = 0.5             # lam ~ U(0, mix_max), the labeled crop's share of the mix
    mix_pairing: str = "random"      # random | nearest (pooled appearance)
    mix_direction: str = "clean_teaches_mixed"  # or mixed_teaches_clean

    def check(self, cfg):
        super().check(cfg)
        if not 0 < self.mix_max < 1:
            raise ConfigError(f"config key 'method.mix_max' must be in (0, 1), got {self.mix_max}")
        one_of("mix_pairing", self.mix_pairing, ("random", "nearest"))
        one_of("mix_direction", self.mix_direction, ("clean_teaches_mixed", "mixed_teaches_clean"))


def pair_labeled(lab_x, unl_x, how, draws):
    """For each unlabeled crop, the index of a labeled crop: random, or the nearest by pooled
    appearance (cosine similarity of 4x3-pooled pixels, a cheap stand-in for pooled features)."""
    if how == "random":
        return draws.integers(0, len(lab_x), len(unl_x)).to(unl_x.device)
    feat = lambda x: F.normalize(F.adaptive_avg_pool2d(x, (4, 3)).flatten(1), dim=1)
    return (feat(unl_x) @ feat(lab_x).T).argmax(1)


def recover(mixed_heat, labeled_target, lam):
    """The unlabeled part of a mixed prediction: (H_mix - lam * G_l)^+ / (1 - lam), exact where the net
    is linear in the mix and right on the labeled crop (G_l: its ground-truth heatmap)."""
    lam = lam.view(-1, 1, 1, 1)
    return (mixed_heat - lam * labeled_target).clamp(min=0) / (1 - lam)


@register("guided_mix")
class GuidedMix(Method):
    """Each unlabeled crop is mixed with a labeled one, x = lam x_l + (1 - lam) x_u, lam ~ U(0, mix_max)
    (the labeled crop the minor part), and the unlabeled heatmap is recovered from the mixed prediction
    by removing the labeled ground truth. `mix_direction` is the collapse axis: clean_teaches_mixed
    (the released code: the clean prediction, stop-gradient, teaches the recovered one: easy -> hard) or
    mixed_teaches_clean (the paper's wording: the recovered heatmap teaches the clean prediction)."""
    Settings = GuidedMixSettings
    uses_unlabeled = True
    order, cost = 9, 2.0

    @classmethod
    def variant(cls, s):
        return " (mixed teaches clean)" if s.get("mix_direction") == "mixed_teaches_clean" else ""

    def losses(self, ctx, lab, unl):
        terms = super().losses(ctx, lab, None)
        if unl is None:
            return terms
        xu = self.student_view(ctx, unl, "easy").image
        draws = ctx.batches.draws
        pair = pair_labeled(lab["x"], xu, self.cfg.mix_pairing, draws)
        lam = draws.uniform(len(xu)).to(xu.device) * self.cfg.mix_max
        mixed = lam.view(-1, 1, 1, 1) * lab["x"][pair] + (1 - lam.view(-1, 1, 1, 1)) * xu
        g_l = lab["target"][pair]
        if self.cfg.mix_direction == "clean_teaches_mixed":
            with torch.no_grad():
                target = ctx.forward(xu)
            pred = recover(ctx.forward(mixed), g_l, lam)
        else:
            with torch.no_grad():
                target = recover(ctx.forward(mixed), g_l, lam)
            pred = ctx.forward(xu)
        terms["unsup"] = self.unsup_weight(ctx.step) * heatmap_mse(pred, target)
        return terms
