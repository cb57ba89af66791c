"""The 2-D toy study: the paper's picture of the decision boundary moving into the minor class.

Two Gaussian classes in the plane, a major "background" class (95%) and a minor "foreground" class (5%),
as pixels of a heatmap are; the centres lie on the x axis, and both classes spread alike along y. A small
MLP regresses the class (0 background, 1 foreground) with the same MSE as heatmaps, and the *same method
objects* as the pose trainer (`collapse.methods`) supply the loss recipes.

Views mirror the pose trainer's. An easy view is the point plus isotropic noise (the easy affine: it
moves the sample in every direction). A hard view adds to the *same* easy view an extra draw along y
only, which leaves the class unchanged, as the extra affine leaves a pixel's label unchanged once the
teacher's heatmap is carried along with it. Predictions are invariant, so transport is the identity.

The boundary (prediction = 0.5) is measured where it crosses the line joining the class centres, and
as the share of minor-class points it calls background. Naive consistency compares two independent easy
views with gradient through both: it smooths the prediction across the class direction, weighted by
density, and near the boundary most points are background, so the boundary slides into the minor class.
Easy->hard teaching (stop-gradient teacher on the easy view, student on the harder view of the same
sample) asks for invariance to the label-preserving extra only, and the boundary stays where the labels
put it. With isotropic (label-changing) hard noise instead, easy->hard smooths across the boundary too
and also moves it: the toy shows that what prevents the drift is a target that is at least as accurate
as the student's view, not the stop-gradient alone.

    python -m analysis.toy --out results/toy       (or: collapse toy --out results/toy)
"""
import argparse
import os

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from collapse.config import method_settings
from collapse.augment import View
from collapse.methods import Context, build_method
from collapse.runs import atomic_write_text

from .figures import save, setup
from .toy_settings import DESCRIPTION, ToySettings, add_arguments

MAJOR_CENTRE, MINOR_CENTRE = (-1.0, 0.0), (1.0, 0.0)


def make_points(n, minor_share, spread, gen):
    """n points, a minor_share of them minor (label 1); the minor count is exact, so splits stay imbalanced."""
    n_minor = max(1, int(round(n * minor_share)))
    y = torch.zeros(n)
    y[:n_minor] = 1
    centres = torch.where(y[:, None] > 0, torch.tensor(MINOR_CENTRE), torch.tensor(MAJOR_CENTRE))
    x = centres + spread * torch.randn(n, 2, generator=gen)
    order = torch.randperm(n, generator=gen)
    return x[order], y[order]


class ToyViews:
    """The `ctx.batches` a method sees, for points: views are noise draws, transport is the identity."""
    stride = 1

    def __init__(self, s: ToySettings, gen):
        self.s, self.gen = s, gen
        self.views = self  # methods ask ctx.batches.views.extra(...) for the shared hard draw (dual)

    def noise(self, n, std):
        return std * torch.randn(n, 2, generator=self.gen)

    def extra(self, n, device=None):
        # label-preserving: along y only, which the classes share (as an affine with its heatmap carried along)
        return self.noise(n, self.s.hard_noise) * torch.tensor([0.0, 1.0])

    def unlabeled(self, x):
        return dict(points=x, easy=self.noise(len(x), self.s.easy_noise))

    def view(self, unl, kind="easy", photometric=None, extra=None):
        x = unl["points"] + (self.noise(len(unl["points"]), self.s.easy_noise) if kind == "fresh" else unl["easy"])
        if kind == "hard":
            x = x + (self.extra(len(x)) if extra is None else extra)
        return View(x, None, None)

    def transport(self, heat, *frames):
        return heat, torch.ones_like(heat[:, :1])  # the teacher saw the whole (2-D) input

    @staticmethod
    def reorder(t, *views):
        return t


class ToyNet(nn.Module):
    """A small MLP whose output has the heatmap shape (B, 1, 1, 1), so the pose losses apply unchanged."""

    def __init__(self, width=64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                  nn.Linear(width, 1))

    def forward(self, x):
        return self.body(x).view(-1, 1, 1, 1)


METHODS = {  # label -> method config of collapse.methods
    "supervised": dict(name="supervised"),
    "naive consistency": dict(name="consistency"),
    "easy->hard (single)": dict(name="easy_hard", pair="easy_hard"),
    "easy->hard (dual)": dict(name="dual"),
}


def boundary_position(net, lo=-1.0, hi=3.0, n=801):
    """Where the prediction first falls below 0.5 walking from the minor centre toward the major one,
    as the x coordinate on the line through both centres (hi if the minor centre itself is background)."""
    xs = torch.linspace(hi, lo, n)
    with torch.no_grad():
        p = net(torch.stack([xs, torch.zeros(n)], 1)).flatten()
    # walk from the minor centre (x=1) toward the major one: the first x where p < 0.5
    from_minor = xs <= MINOR_CENTRE[0]
    below = (p < 0.5) & from_minor
    if not (p[from_minor][0] >= 0.5):
        return float(MINOR_CENTRE[0])  # the minor centre itself is called background: fully collapsed
    return float(xs[below][0]) if below.any() else lo


def train_toy(label, s: ToySettings, data):
    """Train one method on the toy problem; rows of (method, step, measure, value) and boundary grids."""
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed + 1)
    settings = method_settings(METHODS[label]["name"])(**METHODS[label])
    if hasattr(settings, "unsup_weight"):  # supervised reads no unsupervised weight
        settings.unsup_weight = s.unsup_weight
    method = build_method(settings)
    nets = [ToyNet() for _ in range(method.nets)]
    views = ToyViews(s, gen)
    ctx = Context(nets, views)
    method.setup(ctx)
    opt = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=s.lr)
    (xl, yl), (xu, yu), grid = data
    rows, grids = [], {}
    for step in range(s.steps + 1):
        if step in s.snapshots:
            with torch.no_grad():
                nets[0].eval()
                grids[step] = nets[0](grid).view(-1).numpy()
                minor_called_bg = float((nets[0](xu[yu > 0]).flatten() < 0.5).float().mean())
                nets[0].train()
            rows += [dict(method=label, step=step, measure="boundary_x", value=boundary_position(nets[0])),
                     dict(method=label, step=step, measure="minor_called_background", value=minor_called_bg)]
        if step == s.steps:
            break
        il = torch.randint(len(xl), (s.batch_labeled,), generator=gen)
        lab = dict(x=xl[il] + views.noise(len(il), s.easy_noise), target=yl[il].view(-1, 1, 1, 1), weight=None)
        unl = views.unlabeled(xu[torch.randint(len(xu), (s.batch_unlabeled,), generator=gen)]) \
            if method.uses_unlabeled else None
        ctx.step = step
        loss = sum(method.losses(ctx, lab, unl).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(ctx)
    return rows, grids


def run(s: ToySettings = ToySettings(), methods=tuple(METHODS)):
    """Train every method on one data draw; (tidy DataFrame of measures, {method: {step: grid values}}, data)."""
    gen = torch.Generator().manual_seed(s.seed)
    labeled = make_points(s.labeled, s.minor_share, s.spread, gen)
    unlabeled = make_points(s.unlabeled, s.minor_share, s.spread, gen)
    gx, gy = torch.meshgrid(torch.linspace(-3, 3, 121), torch.linspace(-2, 2, 81), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)
    rows, grids = [], {}
    for label in methods:
        r, g = train_toy(label, s, (labeled, unlabeled, grid))
        rows += r
        grids[label] = g
    return pd.DataFrame(rows), grids, (labeled, unlabeled, (gx.numpy(), gy.numpy()))


def displacement(measures):
    """Final boundary shift of each method toward the minor class, relative to supervised (x units)."""
    last = measures[measures.step == measures.step.max()]
    bx = last[last.measure == "boundary_x"].set_index("method").value
    called = last[last.measure == "minor_called_background"].set_index("method").value
    return pd.DataFrame({"boundary_x": bx, "shift_vs_supervised": bx - bx.get("supervised", np.nan),
                         "minor_called_background": called})


def figure(grids, data, s: ToySettings, path_stem):
    """Rows = methods, columns = steps: the 0.5 boundary over the data (PNG + PDF)."""
    plt = setup()
    (xl, yl), (xu, yu), (gx, gy) = data
    steps = sorted(next(iter(grids.values())))
    fig, axes = plt.subplots(len(grids), len(steps), figsize=(2.1 * len(steps), 1.7 * len(grids)),
                             sharex=True, sharey=True, squeeze=False)
    sub = slice(0, 1500)
    for r, (label, g) in enumerate(grids.items()):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            z = g[step].reshape(gx.shape)
            ax.contourf(gx, gy, z, levels=[0.5, 1e9], colors=["#f4c27a"], alpha=0.6)
            ax.contour(gx, gy, z, levels=[0.5], colors="k", linewidths=1)
            xs, ys = xu[sub].numpy(), yu[sub].numpy()
            ax.scatter(xs[ys == 0, 0], xs[ys == 0, 1], s=1, c="#4c72b0", alpha=0.3, lw=0)
            ax.scatter(xs[ys == 1, 0], xs[ys == 1, 1], s=3, c="#c44e52", lw=0)
            ax.scatter(xl[yl == 1, 0], xl[yl == 1, 1], s=14, marker="*", c="#8b0000", lw=0)
            ax.set_xlim(-3, 3)
            ax.set_ylim(-2, 2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {step}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"decision boundary (prediction 0.5, shaded = minor class) - minor share {s.minor_share:.0%}",
                 fontsize=9)
    fig.tight_layout()
    return save(fig, path_stem)


def run_cli(a, error):
    if not 0 < a.minor_share < 0.5:
        error("--minor-share must be between 0 and 0.5")
    if a.steps < 1:
        error("--steps must be positive")
    snaps = tuple(sorted({0, a.steps, *(int(a.steps * f) for f in (0.07, 0.2, 0.4, 0.67))}))
    s = ToySettings(seed=a.seed, steps=a.steps, minor_share=a.minor_share, unsup_weight=a.unsup_weight,
                    snapshots=snaps)
    measures, grids, data = run(s)
    os.makedirs(a.out, exist_ok=True)
    atomic_write_text(os.path.join(a.out, "toy_measures.csv"), measures.to_csv(index=False))
    figure(grids, data, s, os.path.join(a.out, "toy_boundary"))
    print(displacement(measures).to_markdown(floatfmt=".3f"))
    print(f"wrote {a.out}/toy_boundary.png, .pdf and toy_measures.csv")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m analysis.toy", description=DESCRIPTION)
    add_arguments(p)
    run_cli(p.parse_args(argv), p.error)


if __name__ == "__main__":
    main()
