"""Paper-ready figures: PDF with embedded TrueType fonts and PNG, byte-identical for the same input.
No backend is forced: matplotlib picks Agg where there is no display, and a notebook keeps its own."""
import os

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from collapse.data.skeleton import for_channels
from collapse.heatmaps import CONFIDENT
from collapse.runs import atomic_write_bytes_from

from .detector import COLLAPSE_RATIO, collapse_curves, collapse_table, final_ap, mean_over_seeds
from .drift import boundary_drift, response_histograms
from .results import ERROR_KINDS, joint_errors, load, method_order, part_errors


def setup():
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "collapse",
                         "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7})
    return plt


def save(fig, path_stem):
    """Write path_stem.png and .pdf atomically (no creation date, so reruns give the same bytes)."""
    paths = []
    for ext in ("png", "pdf"):
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        atomic_write_bytes_from(f"{path_stem}.{ext}", lambda f, ext=ext, meta=meta: fig.savefig(
            f, format=ext, dpi=150, metadata=meta))
        paths.append(f"{path_stem}.{ext}")
    plt.close(fig)
    return paths


# -- the figures of a results folder ---------------------------------------------------------------
def _palette(labels):
    labels = list(labels)
    n = max(len(labels), 1)
    # tab10 while it lasts; beyond 10 lines, distinct hues (tab10 would repeat colours)
    return dict(zip(labels, sns.color_palette("tab10" if n <= 10 else "husl", n)))


def _style(label):
    return "--" if label == "supervised" else "-"


def _lines(ax, frame, value, palette, marker=None):
    """One line per label (mean over seeds), shaded +-1 std where there are several seeds."""
    for label in palette:
        d = frame[frame.label == label]
        if not len(d):
            continue
        m = mean_over_seeds(d, value).sort_values("step")
        ax.plot(m.step, m["mean"], ls=_style(label), color=palette[label], marker=marker, ms=3, label=label)
        if d.seed.nunique() > 1:
            ax.fill_between(m.step, m["mean"] - m["std"], m["mean"] + m["std"], color=palette[label], alpha=0.15)
    ax.grid(alpha=0.3)
    ax.set_xlabel("step")


def collapse_curves_figure(runs, metrics, probes, stem):
    """Unlabeled mean max response, the collapse index, and val AP vs step, one line per method."""
    plt = setup()
    curves = collapse_curves(runs, probes)
    palette = _palette(sorted(curves.label.unique(), key=method_order))
    ap = metrics[(metrics.split == "val") & metrics.name.isin(["AP", "AP/net0"])].merge(
        runs[["run", "label"]].assign(seed=runs.get("train.seed")), on="run")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    _lines(axes[0], curves, "response", palette)
    axes[0].set_ylabel("unlabeled mean max response")
    _lines(axes[1], curves, "index", palette)
    axes[1].axhline(COLLAPSE_RATIO, color="k", lw=0.8, ls=":")
    axes[1].set_ylabel("collapse index (response / own peak)")
    _lines(axes[2], ap, "value", palette, marker="o")
    axes[2].set_ylabel("validation OKS AP")
    if len(palette) <= 8:
        axes[2].legend(ncol=1, loc="best")
    else:  # many methods: the legend beside the panels, not over the curves
        axes[2].legend(ncol=1 + len(palette) // 16, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return save(fig, stem)


def response_distributions_figure(runs, probes, stem, split="unlabeled"):
    """Ridge plot per method: the pixel-response histogram (log-spaced bins) at each probe step."""
    plt = setup()
    h = response_histograms(runs, probes, split)
    h = h[h.edge > 0]  # the bins above 0.001; the mass at ~0 (background) would flatten every ridge
    labels = sorted(h.label.unique(), key=method_order)
    fig, axes = plt.subplots(1, len(labels), figsize=(2.3 * len(labels), 3.6), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, label in zip(axes[0], labels):
        d = h[h.label == label].groupby(["step", "edge"]).share.mean().reset_index()
        steps = sorted(d.step.unique())
        top = max(d.share.max(), 1e-9)
        for k, step in enumerate(steps):
            s = d[d.step == step].sort_values("edge")
            y = k + 2.5 * s.share.values / top
            ax.fill_between(np.log10(s.edge.values), k, y, color=cmap(k / max(len(steps) - 1, 1)), alpha=0.7, lw=0)
            ax.plot(np.log10(s.edge.values), y, color="k", lw=0.4)
        ax.set_yticks(range(len(steps)))
        ax.set_yticklabels([str(int(s)) for s in steps], fontsize=6)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("log10 response")
    axes[0][0].set_ylabel("step")
    fig.suptitle(f"pixel-response distributions on {split} crops (share of pixels per log bin, >= 0.001)")
    fig.tight_layout()
    return save(fig, stem)


def boundary_drift_figure(runs, probes, stem, split="unlabeled"):
    """Per tau: the foreground's equivalent radius and the share of joint pixels called background."""
    plt = setup()
    d = boundary_drift(runs, probes, split)
    taus = sorted(d.tau.unique())
    palette = _palette(sorted(d.label.unique(), key=method_order))
    fig, axes = plt.subplots(2, len(taus), figsize=(2.4 * len(taus), 4.6), sharex=True, squeeze=False)
    for c, tau in enumerate(taus):
        dt = d[d.tau == tau]
        _lines(axes[0][c], dt, "radius", palette)
        r = dt.target_radius.dropna()
        if len(r):
            axes[0][c].axhline(r.iloc[0], color="k", lw=0.8, ls=":")
        axes[0][c].set_title(f"tau = {tau:g}")
        _lines(axes[1][c], dt, "gt_bg_share", palette)
        axes[1][c].set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("fg equivalent radius (px)\n(dotted: target's)")
    axes[1][0].set_ylabel("joint pixels called bg")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, stem)


def final_ap_figure(runs, metrics, stem):
    """Final AP per method, mean over seeds with the seeds' std as error bars (one group per labeled size)."""
    plt = setup()
    t = runs.assign(AP=final_ap(runs, metrics).values, labeled=runs.get("data.labeled", -1)).dropna(subset=["AP"])
    labels = sorted(t.label.unique(), key=method_order)
    sizes = sorted(t.labeled.unique())
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(labels) * len(sizes)), 3.2))
    width = 0.8 / max(len(sizes), 1)
    for k, size in enumerate(sizes):
        g = t[t.labeled == size].groupby("label").AP
        mean, std = g.mean().reindex(labels), g.std().fillna(0).reindex(labels)
        x = np.arange(len(labels)) + (k - (len(sizes) - 1) / 2) * width
        ax.bar(x, mean.values, width, yerr=std.values, capsize=2, label=f"{size} labeled")
        for xi, (label, n) in zip(x, g.size().reindex(labels).fillna(0).items()):
            ax.scatter(np.full(int(n), xi), t[(t.labeled == size) & (t.label == label)].AP, s=6, c="k", zorder=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("final OKS AP")
    ax.set_title("bars: mean over seeds, dots: the seeds, error bars: std")
    if len(sizes) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save(fig, stem)


def phase_diagram_figure(runs, metrics, probes, stem, x="data.sigma", y="method.unsup_weight"):
    """Per method: final AP over the x-y plane (heatmap sigma x unsupervised weight), with the final
    unlabeled response relative to supervised ('resp.'); collapsed cells crossed out: does collapse
    vanish as the foreground share grows?"""
    plt = setup()
    t = collapse_table(runs, probes, metrics).merge(runs[["run", "method", x, y]], on="run")
    t = t[t.method != "supervised"]
    labels = sorted(t.label.unique(), key=method_order)
    xs, ys = sorted(t[x].unique()), sorted(t[y].unique())
    fig, axes = plt.subplots(1, len(labels), figsize=(0.9 * len(xs) * len(labels) + 1.8, 0.8 * len(ys) + 1.6),
                             squeeze=False, layout="constrained")  # room for the labels and the colour bar
    vmax = max(t.AP.max(), 1e-6)
    for ax, label in zip(axes[0], labels):
        d = t[t.label == label].groupby([y, x]).agg(AP=("AP", "mean"), collapsed=("collapsed", "mean"),
                                                    response=("vs_supervised", "mean"))
        grid = np.full((len(ys), len(xs)), np.nan)
        for (yv, xv), row in d.iterrows():
            i, j = ys.index(yv), xs.index(xv)
            grid[i, j] = row.AP
            text = f"AP {row.AP:.3f}\nresp. {row.response:.2f}" + ("\ncollapsed" if row.collapsed >= 0.5 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="k" if row.AP > 0.5 * vmax else "w")
            if row.collapsed >= 0.5:
                ax.plot([j - 0.45, j + 0.45], [i - 0.45, i + 0.45], color="r", lw=1)
        im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)))
        ax.set_yticklabels([f"{v:g}" for v in ys])
        ax.set_xlabel(x)
        ax.set_title(label)
    axes[0][0].set_ylabel(y)
    fig.colorbar(im, ax=list(axes[0]), label="final OKS AP", shrink=0.9)
    return save(fig, stem)


# -- collapse you can see: predicted heatmaps of fixed unlabeled crops ---------------------------------
def _galleries(runs):
    """label -> that label's gallery.npz (lowest seed, finished or not), in plot order."""
    out = {}
    rows = runs.assign(seed=runs.get("train.seed", 0)).sort_values("seed")
    for label, path in zip(rows.label, rows.path):
        f = os.path.join(path, "gallery.npz")
        if label not in out and os.path.exists(f):
            out[label] = dict(np.load(f))
    return {k: out[k] for k in sorted(out, key=method_order)}


def _heatmap_panel(ax, crop, heat, joints, stride):
    """The crop, its summed-joint heatmap (max over joints) overlaid, and the decoded skeleton."""
    h, w = crop.shape[:2]
    ax.imshow(crop, extent=(0, w, h, 0))
    ax.imshow(heat.astype(np.float32), extent=(0, w, h, 0), cmap="magma", alpha=0.55, vmin=0, vmax=1)
    seen = joints[:, 2] > CONFIDENT  # joints the net calls found
    for a, b in for_channels(len(joints)).limb_index:
        if seen[a] and seen[b]:
            ax.plot(joints[[a, b], 0], joints[[a, b], 1], color="#7fdbff", lw=0.8)
    ax.scatter(joints[seen, 0], joints[seen, 1], s=4, c="#7fdbff", lw=0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(runs, stem):
    """Rows = fixed unlabeled crops, columns = methods: the final step's heatmaps and decoded skeletons."""
    fig = gallery_panels(runs)
    return save(fig, stem) if fig is not None else []


def gallery_panels(runs):
    plt = setup()
    g = _galleries(runs)
    if not g:
        return None
    crops = next(iter(g.values()))["crops"]
    fig, axes = plt.subplots(len(crops), len(g), figsize=(1.2 * len(g) + 0.4, 1.6 * len(crops)), squeeze=False)
    for c, (label, d) in enumerate(g.items()):
        for r in range(len(crops)):
            _heatmap_panel(axes[r, c], d["crops"][r], d["heat"][-1, r], d["joints"][-1, r], int(d["stride"]))
        axes[0, c].set_title(f"{label}\nstep {int(d['step'][-1])}", fontsize=6)
    fig.suptitle("unlabeled crops at the final step: heatmap (max over joints) and decoded joints (peak > 0.2)",
                 fontsize=7)
    fig.tight_layout()
    return fig


def evolution_figure(runs, stem, crop=0, columns=8):
    """Rows = methods, columns = probe steps: one unlabeled crop's heatmap as training goes on."""
    fig = evolution_panels(runs, crop, columns)
    return save(fig, stem) if fig is not None else []


def evolution_panels(runs, crop=0, columns=8):
    plt = setup()
    g = _galleries(runs)
    if not g:
        return None
    steps = next(iter(g.values()))["step"]
    picks = np.unique(np.linspace(0, len(steps) - 1, min(columns, len(steps))).round().astype(int))
    fig, axes = plt.subplots(len(g), len(picks), figsize=(1.0 * len(picks) + 0.6, 1.35 * len(g)), squeeze=False)
    for r, (label, d) in enumerate(g.items()):
        for c, k in enumerate(picks):
            k = min(k, len(d["step"]) - 1)
            _heatmap_panel(axes[r, c], d["crops"][crop], d["heat"][k, crop], d["joints"][k, crop], int(d["stride"]))
            if r == 0:
                axes[r, c].set_title(f"step {int(d['step'][k])}", fontsize=6)
        axes[r, 0].set_ylabel(label, fontsize=6)
    fig.suptitle("one unlabeled crop's heatmap as training goes on: does it fade to background?", fontsize=7)
    fig.tight_layout()
    return fig


def write_figures(results_dir, out_dir):
    """Every figure of a results folder into out_dir (PNG + PDF each); returns the written paths."""
    runs, metrics, probes = load(results_dir)
    os.makedirs(out_dir, exist_ok=True)
    j = lambda name: os.path.join(out_dir, name)
    paths = []
    paths += collapse_curves_figure(runs, metrics, probes, j("collapse_curves"))
    if (probes.name == "hist").any():
        paths += response_distributions_figure(runs, probes, j("response_distributions"))
        paths += boundary_drift_figure(runs, probes, j("boundary_drift"))
    paths += final_ap_figure(runs, metrics, j("final_ap"))
    varies = lambda c: c in runs and runs[c].nunique() > 1
    if varies("data.sigma") and varies("method.unsup_weight"):
        paths += phase_diagram_figure(runs, metrics, probes, j("phase_diagram"))
    paths += gallery_figure(runs, j("heatmap_gallery"))
    paths += evolution_figure(runs, j("heatmap_evolution"))
    paths += joint_errors_figure(runs, results_dir, j("joint_errors"))
    return paths


def joint_errors_figure(runs, results_dir, stem):
    """Per method (rows) and body part (columns): the shares of the labeled joints that are good, jittered,
    inverted, swapped or missed at the final evaluation (Ronchi & Perona's kinds; mean over seeds, net 0)."""
    parts = part_errors(joint_errors(results_dir, runs))
    if parts.empty:
        return []
    kinds = list(ERROR_KINDS)
    mean = parts.groupby(["label", "part"], sort=False)[kinds].mean().reset_index()
    labels = sorted(mean.label.unique(), key=method_order)
    names = list(dict.fromkeys(mean.part))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 0.45 * len(labels) + 1.4), sharey=True)
    axes = np.atleast_1d(axes)
    colours = sns.color_palette("RdYlGn_r", len(kinds))
    for ax, part in zip(axes, names):
        m = mean[mean.part == part].set_index("label").reindex(labels)
        left = np.zeros(len(labels))
        for kind, colour in zip(kinds, colours):
            ax.barh(range(len(labels)), m[kind].fillna(0), left=left, color=colour, label=kind)
            left += m[kind].fillna(0).to_numpy()
        ax.set_title(part)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of labeled joints")
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, stem)
