"""Response statistics recorded while training: how collapse is made visible.

Every `train.probe_every` steps, on fixed probe sets (the first `train.probe_size` unlabeled and
validation crops, un-augmented), in eval mode, on the device. Only raw statistics are recorded, as tidy
rows (step, split, net, joint, name, param, value); `analysis` turns them into curves and detectors.
  max_response        per joint (joint=-1: mean over joints) mean over crops of the heatmap's peak
  hist                share of pixel responses in log-spaced bins (param = the bin's lower edge)
  fg_area             share of pixels above tau (param = tau): the heatmap's foreground
  gt_bg_share         share of ground-truth joint pixels (target > 0.5) below tau: joints called background
  agree_mse/agree_px  teacher-student (EMA) or net-net (dual) heatmap MSE and peak distance (heatmap px)
Why, not only that (unlabeled probe set only; its ground truth is read here, never by a loss):
  pl_quantity         per joint, the share of visible joints whose peak exceeds tau (param): how many
                      pseudo-labels this net would hand out as a teacher ...
  pl_quality          ... and the PCK (error < 0.1 x crop height) of exactly those joints
  conf_err_rank       rank correlation of peak confidence with localisation error over visible joints
                      (healthy: negative; a collapsing or over-confident teacher drifts toward 0)
  disagree_err_rank   two nets or EMA teacher and student: rank correlation of their peak distance with
                      net 0's error (SSPCM's inconsistency as a quality signal)
The first GALLERY unlabeled probe crops' heatmaps (max over joints, fp16) and decoded joints are kept at
every probe (Prober.gallery) for the heatmap gallery and evolution figures.
"""
import numpy as np
import torch

from .augment import normalise, store_to_input, transform_points, warp
from .heatmaps import decode
from .models import evaluating

TAUS = (0.1, 0.2, 0.3, 0.4, 0.5)
PL_TAUS = (0.2, 0.5)  # pseudo-label thresholds of the quantity/quality probes
GALLERY = 4           # unlabeled probe crops whose heatmaps are kept at every probe
HIST_EDGES = np.concatenate([[-np.inf, 0.0], np.logspace(-3, 0, 13), [np.inf]])


class Prober:
    def __init__(self, batches, pools, size):
        """pools: {split: Pool}; the probe set of each is its first `size` rows, fixed for the run."""
        self.batches = batches
        self.sets = {}
        for split, pool in pools.items():
            if pool is None or len(pool) == 0:
                continue
            idx = torch.arange(min(size, len(pool)))
            crops, kps = pool.fetch(idx)
            A = store_to_input(len(idx), pool.store.store_hw, batches.input_hw, batches.device)
            target, weight = batches.targets(A, torch.zeros(len(idx), dtype=torch.bool, device=A.device), kps)
            points = transform_points(A, kps[..., :2].float())  # input pixels
            self.sets[split] = (warp(normalise(crops), A, batches.input_hw), target, weight, points)
            if split == "unlabeled":
                self.gallery_crops = warp(crops[:GALLERY].permute(0, 3, 1, 2).float(), A[:GALLERY], batches.input_hw)
        self.edges = torch.tensor(HIST_EDGES[1:-1], dtype=torch.float32)
        self.gallery = []  # (step, max-over-joints heatmaps (K,h,w) fp16, decoded joints (K,J,3)) per probe
        self.histograms = {}  # (split, net) -> the last probe's pixel-response counts per HIST_EDGES bin and moments

    @torch.no_grad()
    def __call__(self, step, nets, teachers):
        rows = []
        add = lambda split, net, joint, name, param, value: rows.append(
            (step, split, net, joint, name, float(param), float(value)))
        for split, (x, target, weight, points) in self.sets.items():
            heats = []
            for i, net in enumerate(nets):
                with evaluating(net):
                    h = net(x).float()
                heats.append(h)
                peak = h.amax((2, 3)).mean(0).cpu().numpy()
                for j, v in enumerate(peak):
                    add(split, i, j, "max_response", np.nan, v)
                add(split, i, -1, "max_response", np.nan, peak.mean())
                flat = h.flatten().cpu()
                counts = torch.bucketize(flat, self.edges, right=True).bincount(minlength=len(HIST_EDGES) - 1)
                self.histograms[(split, i)] = dict(counts=counts.numpy(), min=float(flat.min()), max=float(flat.max()),
                                                   sum=float(flat.sum()), sum_squares=float((flat * flat).sum()))
                for edge, c in zip(HIST_EDGES[:-1], (counts / counts.sum()).numpy()):
                    add(split, i, -1, "hist", edge, c)
                gt = (target > 0.5) & (weight[..., None, None] > 0)
                n_gt = gt.sum().clamp(min=1)
                for tau in TAUS:
                    add(split, i, -1, "fg_area", tau, (h > tau).float().mean())
                    add(split, i, -1, "gt_bg_share", tau, ((h < tau) & gt).sum() / n_gt)
            pairs = []
            if len(nets) >= 2:  # net 0 and net 1 (dual's pair; SSPCM's student and first teacher)
                pairs.append((heats[0], heats[1]))
            elif teachers and teachers[0] is not nets[0]:
                pairs.append((teachers[0](x).float(), heats[0]))
            for a, b in pairs:
                dist = (decode(a)[0] - decode(b)[0]).norm(dim=-1)
                add(split, 0, -1, "agree_mse", np.nan, ((a - b) ** 2).mean())
                add(split, 0, -1, "agree_px", np.nan, dist.mean())
            if split != "unlabeled":
                continue
            vis = weight > 0
            for i, h in enumerate(heats):
                xy, conf = decode(h)
                err = (xy * self.batches.stride - points).norm(dim=-1)
                correct = err < 0.1 * self.batches.input_hw[0]
                for tau in PL_TAUS:
                    chosen = (conf > tau) & vis
                    n_vis, n_chosen = vis.sum(0).clamp(min=1), chosen.sum(0)
                    quantity = (n_chosen / n_vis).cpu().numpy()
                    quality = torch.where(n_chosen > 0, (correct & chosen).sum(0) / n_chosen.clamp(min=1),
                                          torch.full_like(n_vis, float("nan"), dtype=torch.float)).cpu().numpy()
                    for j in range(len(quantity)):
                        add(split, i, j, "pl_quantity", tau, quantity[j])
                        add(split, i, j, "pl_quality", tau, quality[j])
                    add(split, i, -1, "pl_quantity", tau, chosen.sum() / vis.sum().clamp(min=1))
                    add(split, i, -1, "pl_quality", tau, (correct & chosen).sum() / chosen.sum().clamp(min=1)
                        if chosen.any() else np.nan)
                add(split, i, -1, "conf_err_rank", np.nan, rank_correlation(conf[vis], err[vis]))
                if i == 0 and pairs:
                    add(split, 0, -1, "disagree_err_rank", np.nan, rank_correlation(dist[vis], err[vis]))
            self.gallery.append((step, heats[0][:GALLERY].amax(1).half().cpu(),
                                 torch.cat([decode(heats[0][:GALLERY])[0] * self.batches.stride,
                                            decode(heats[0][:GALLERY])[1][..., None]], -1).cpu()))
        return rows


def rank_correlation(a, b):
    """Spearman's rank correlation of two 1-D tensors (ties broken by order), NaN for fewer than 3 values."""
    if len(a) < 3:
        return float("nan")
    ra, rb = (v.argsort().argsort().float() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


PROBE_COLUMNS = ["step", "split", "net", "joint", "name", "param", "value"]

# -- the collapse index and detector (shared by the trainer's early stop and `analysis`) -------------
COLLAPSE_RATIO = 0.5     # collapsed: the response fell below half of the run's own peak ...
COLLAPSE_PATIENCE = 2    # ... at this many consecutive probes ...
COLLAPSE_FLOOR = 0.05    # ... after the peak had exceeded this (an untrained net is not a collapsed one)


def collapse_index(responses):
    """Collapse index per probe: the unlabeled mean max response relative to the run's own running peak
    (1 = at its best so far, 0 = every pixel called background). responses: values in step order."""
    r = np.asarray(responses, dtype=float)
    peak = np.maximum.accumulate(np.nan_to_num(r, nan=0.0)) if len(r) else r
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, r / np.where(peak > 0, peak, 1), 1.0), peak


def collapse_step(steps, responses, ratio=COLLAPSE_RATIO, patience=COLLAPSE_PATIENCE, floor=COLLAPSE_FLOOR):
    """The first step of `patience` consecutive probes with index < ratio (peak above floor), or None."""
    index, peak = collapse_index(responses)
    low = (index < ratio) & (peak > floor)
    run = 0
    for i, is_low in enumerate(low):
        run = run + 1 if is_low else 0
        if run >= patience:
            return int(steps[i - patience + 1])
    return None


def unlabeled_response(rows, net=0):
    """(steps, responses) of the unlabeled mean max response from probe rows (tuples in PROBE_COLUMNS order)."""
    pts = sorted((r[0], r[6]) for r in rows if r[1] == "unlabeled" and r[2] == net and r[3] == -1
                 and r[4] == "max_response")
    return [p[0] for p in pts], [p[1] for p in pts]
