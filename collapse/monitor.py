"""Watching collapse in any trainer: the probes, one implementation, used by collapse's Trainer
(collapse/probes.py) and by other people's loops (CollapseMonitor; Lightning and mmengine adapters in
collapse/integrations/).

Every probe runs the nets on fixed probe sets, in eval mode, under no_grad, and records raw statistics
as tidy rows (step, split, net, joint, name, param, value); `analysis` turns them into curves and detectors.
  max_response        per joint (joint=-1: mean over joints) mean over crops of the heatmap's peak
  hist                share of pixel responses in log-spaced bins (param = the bin's lower edge)
  fg_area             share of pixels above tau (param = tau): the heatmap's foreground
  gt_bg_share         share of ground-truth joint pixels (target > 0.5) below tau: joints called background
  agree_mse/agree_px  teacher-student (EMA) or net-net (dual) heatmap MSE and peak distance (heatmap px)
Why, not only that (the unlabeled probe set, where its ground truth is known; read here, never by a loss):
  pl_quantity         per joint, the share of visible joints whose peak exceeds tau (param): how many
                      pseudo-labels this net would hand out as a teacher ...
  pl_quality          ... and the PCK (error < 0.1 x crop height) of exactly those joints
  conf_err_rank       rank correlation of peak confidence with localisation error over visible joints
  disagree_err_rank   two nets or EMA teacher and student: rank correlation of their peak distance with
                      net 0's error (SSPCM's inconsistency as a quality signal)
The first GALLERY unlabeled probe crops' heatmaps (max over joints, fp16) and decoded joints are kept at
every probe for the heatmap gallery and evolution figures.
"""
import contextlib
import os
import time
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import torch

from . import runs
from .detector import COLLAPSE_RATIO, collapse_index, detect, detector_series, unlabeled_response
from .errors import UserError
from .heatmaps import decode, gaussian_targets
from .models import evaluating

TAUS = (0.1, 0.2, 0.3, 0.4, 0.5)
PL_TAUS = (0.2, 0.5)  # pseudo-label thresholds of the quantity/quality probes
GALLERY = 4           # unlabeled probe crops whose heatmaps are kept at every probe
HIST_EDGES = np.concatenate([[-np.inf, 0.0], np.logspace(-3, 0, 13), [np.inf]])


class ProbeRow(NamedTuple):
    """One probe statistic (a row of probes.parquet): `name` of net `net` on probe set `split` at `step`, for
    joint `joint` (-1: over every joint), at parameter `param` (a threshold, a histogram edge; NaN: none)."""
    step: int
    split: str
    net: int
    joint: int
    name: str
    param: float
    value: float


PROBE_COLUMNS = list(ProbeRow._fields)

def rank_correlation(a, b):
    """Spearman's rank correlation of two 1-D tensors (ties broken by order), NaN for fewer than 3 values."""
    if len(a) < 3:
        return float("nan")
    ra, rb = (v.argsort().argsort().float() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


# -- the statistics ------------------------------------------------------------------------------------------
class ProbeSet(NamedTuple):
    """Network inputs (N,3,H,W) and, where known, the ground truth: Gaussian targets (N,J,h,w), joint
    weights (N,J) and joints in input pixels (N,J,2)."""
    x: torch.Tensor
    target: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    points: Optional[torch.Tensor] = None


def _predict(net, x):
    """A net's heatmaps of x in eval mode (its mode given back), or a plain predict(x) callable's."""
    with evaluating(net) if isinstance(net, torch.nn.Module) else contextlib.nullcontext():
        return net(x).float()


@torch.no_grad()
def probe_statistics(step, sets, nets, teachers, stride, crop_height):
    """One probe of `nets` (and an EMA teacher: teachers[0] when it is not nets[0]) on `sets` ({split:
    ProbeSet}) -> ([ProbeRow], {(split, net): histogram}, gallery entry or None)."""
    rows, histograms, gallery = [], {}, None
    edges = torch.tensor(HIST_EDGES[1:-1], dtype=torch.float32)
    add = lambda split, net, joint, name, param, value: rows.append(
        ProbeRow(step, split, net, joint, name, float(param), float(value)))
    for split, (x, target, weight, points) in sets.items():
        heats = []
        for i, net in enumerate(nets):
            h = _predict(net, x)
            heats.append(h)
            peak = h.amax((2, 3)).mean(0).cpu().numpy()
            for j, v in enumerate(peak):
                add(split, i, j, "max_response", np.nan, v)
            add(split, i, -1, "max_response", np.nan, peak.mean())
            flat = h.flatten().cpu()
            counts = torch.bucketize(flat, edges, right=True).bincount(minlength=len(HIST_EDGES) - 1)
            histograms[(split, i)] = dict(counts=counts.numpy(), min=float(flat.min()), max=float(flat.max()),
                                          sum=float(flat.sum()), sum_squares=float((flat * flat).sum()))
            for edge, c in zip(HIST_EDGES[:-1], (counts / counts.sum()).numpy()):
                add(split, i, -1, "hist", edge, c)
            gt = None if target is None else (target > 0.5) & (weight[..., None, None] > 0)
            for tau in TAUS:
                add(split, i, -1, "fg_area", tau, (h > tau).float().mean())
                if gt is not None:
                    add(split, i, -1, "gt_bg_share", tau, ((h < tau) & gt).sum() / gt.sum().clamp(min=1))
        pairs = []
        if len(nets) >= 2:  # net 0 and net 1 (dual's pair; SSPCM's student and first teacher)
            pairs.append((heats[0], heats[1]))
        elif teachers and teachers[0] is not nets[0]:
            pairs.append((_predict(teachers[0], x), heats[0]))
        for a, b in pairs:
            dist = (decode(a)[0] - decode(b)[0]).norm(dim=-1)
            add(split, 0, -1, "agree_mse", np.nan, ((a - b) ** 2).mean())
            add(split, 0, -1, "agree_px", np.nan, dist.mean())
        if split != "unlabeled":
            continue
        if points is not None:
            vis = weight > 0
            for i, h in enumerate(heats):
                xy, conf = decode(h)
                err = (xy * stride - points).norm(dim=-1)
                correct = err < 0.1 * crop_height
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
        gallery = (step, heats[0][:GALLERY].amax(1).half().cpu(),
                   torch.cat([decode(heats[0][:GALLERY])[0] * stride, decode(heats[0][:GALLERY])[1][..., None]], -1).cpu())
    return rows, histograms, gallery


def write_gallery(path, gallery, stride, crops):
    """RUN/gallery.npz: a few unlabeled crops (uint8 HWC) and their heatmaps and joints at every probe."""
    runs.atomic_write_bytes_from(path, lambda f: np.savez_compressed(
        f, step=np.array([s for s, _, _ in gallery]), heat=torch.stack([h for _, h, _ in gallery]).numpy(),
        joints=torch.stack([j for _, _, j in gallery]).numpy(), stride=stride,
        crops=crops.round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()))


# -- the monitor for any trainer -------------------------------------------------------------------------------
class MonitorError(UserError):
    """A probe set, a model output or a setting the monitor cannot use."""


def _images(source, size, name):
    """A probe set's network inputs (N,3,H,W) from a tensor or a Dataset (items: a tensor, a tuple/list whose
    first entry is one, or a dict with 'image', 'img' or 'inputs')."""
    if isinstance(source, torch.Tensor):
        x = source[:size]
    else:
        try:
            n = min(size, len(source))
            items = [source[i] for i in range(n)]
        except TypeError:
            raise MonitorError(f"{name}: a tensor (N,3,H,W), a Dataset or a COCO-format folder, got {type(source).__name__}")
        pick = lambda it: it if isinstance(it, torch.Tensor) else it[0] if isinstance(it, (tuple, list)) else \
            next((it[k] for k in ("image", "img", "inputs") if isinstance(it, dict) and k in it), None)
        picked = [pick(it) for it in items]
        if not picked or any(not isinstance(p, torch.Tensor) for p in picked):
            raise MonitorError(f"{name}: its items hold no image tensor (a tensor, (image, ...) or {{'image': ...}})")
        x = torch.stack(picked)
    if x.dim() != 4 or x.shape[1] != 3 or len(x) == 0 or not x.is_floating_point():
        raise MonitorError(f"{name}: images must be a float tensor (N,3,H,W) with N >= 1, got {tuple(x.shape)} {x.dtype}")
    return x


def coco_probe_set(root, split, input_size, size=128, margin=1.25, device="cpu"):
    """The first `size` persons of a COCO-format folder's split, cropped through collapse's crop store at
    `input_size` (height, width), ImageNet-normalised -> (images, keypoints in input pixels)."""
    from .augment import normalise, store_to_input, transform_points, warp
    from .data.store import Pool, build as build_store
    if not os.path.isdir(root):
        raise MonitorError(f"probe folder not found: {root}")
    hw = tuple(input_size)
    store = build_store(root, split, hw, margin, False)
    pool = Pool(store, np.arange(min(size, len(store))), torch.device(device))
    crops, kps = pool.fetch(torch.arange(len(pool)))
    A = store_to_input(len(pool), store.store_hw, hw, pool.device)
    points = transform_points(A, kps[..., :2].float())
    return warp(normalise(crops), A, hw), torch.cat([points, kps[..., 2:].float()], -1)


class CollapseMonitor:
    """Probes a heatmap model while someone else's loop trains it, and keeps a run folder `analysis` reads
    like collapse's own (manifest.json, probes.parquet, metrics.parquet, gallery.npz, config.yaml).

        monitor = CollapseMonitor(model, unlabeled_images, "results/my_run", every=100)
        for step, batch in enumerate(loader, 1):
            ...                                  # the caller's own step
            if monitor(step):                    # probes when due; True once the detector fires
                break
        monitor.close()

    model: an nn.Module returning heatmaps (N,K,h,w), or a callable predict(x) -> heatmaps. unlabeled: the
    fixed unlabeled probe crops (a tensor, a Dataset, or a COCO-format folder: `unlabeled_split` and
    `input_size` then say which split and crop size); `unlabeled_joints` (N,K,3: x, y in input pixels,
    visibility) makes the pseudo-label quantity/quality probes possible. labeled: (images, joints) probed
    as split 'val' (with PCK@0.1 in metrics.parquet). teacher: an EMA teacher to compare with. A probe runs
    under no_grad, in eval mode, and gives the model back in the mode it had, gradients untouched."""

    def __init__(self, model, unlabeled, folder, *, unlabeled_joints=None, labeled=None, teacher=None, every=100,
                 size=128, sigma=2.0, name="monitored", stop_on_collapse=False, collapse_ratio=COLLAPSE_RATIO,
                 unlabeled_split="val", input_size=None, device=None):
        if every < 1 or size < 1:
            raise MonitorError(f"every and size must be >= 1, got every={every}, size={size}")
        if not (isinstance(model, torch.nn.Module) or callable(model)):
            raise MonitorError(f"model must be an nn.Module or a callable predict(x), got {type(model).__name__}")
        if isinstance(unlabeled, str):
            if input_size is None:
                raise MonitorError("a COCO-format probe folder needs input_size=(height, width)")
            unlabeled, unlabeled_joints = coco_probe_set(unlabeled, unlabeled_split, input_size, size)
        self.model, self.teacher, self.folder, self.every = model, teacher, folder, every
        self.name, self.sigma = name, sigma
        self.stop_on_collapse, self.collapse_ratio = stop_on_collapse, collapse_ratio
        self.device = torch.device(device) if device else _device_of(model)
        x = _images(unlabeled, size, "unlabeled probe set").to(self.device)
        self.raw = {"unlabeled": (x, _joints(unlabeled_joints, len(x), "unlabeled_joints", self.device))}
        if labeled is not None:
            if not isinstance(labeled, (tuple, list)) or len(labeled) != 2:
                raise MonitorError("labeled must be (images, joints): joints (N,K,3) in input pixels")
            lx = _images(labeled[0], size, "labeled probe set").to(self.device)
            self.raw["val"] = (lx, _joints(labeled[1], len(lx), "labeled joints", self.device))
        self.sets, self.stride = None, None  # made at the first probe, when the heatmap size is known
        self.rows, self.metrics, self.gallery, self.histograms = [], [], [], {}
        self.collapsed, self.rule, self.seconds, self.crops_probed = None, None, 0.0, 0
        self.run = runs.RunDir(folder)
        cfg = dict(method=dict(name=name), monitor=dict(every=every, size=len(x), sigma=sigma,
                                                       stop_on_collapse=stop_on_collapse, collapse_ratio=collapse_ratio))
        self.run.write_config(cfg)
        self.run.update_manifest(status="running", run_id=runs.run_id(cfg), method=name, monitored=True,
                                 started=time.time(), versions=runs.versions())

    def _prepare(self, heat, x):
        """Probe sets with ground truth rendered at the model's heatmap size (known from its first output)."""
        h, w = x.shape[-2:]
        if heat.dim() != 4 or heat.shape[0] != len(x):
            raise MonitorError(f"the model must return heatmaps (N,K,h,w) for N={len(x)} crops, got {tuple(heat.shape)}")
        if h % heat.shape[-2] or w % heat.shape[-1] or h // heat.shape[-2] != w // heat.shape[-1]:
            raise MonitorError(f"heatmaps {tuple(heat.shape[-2:])} are not the input {(h, w)} over one integer stride")
        self.stride = h // heat.shape[-2]
        self.crop_height = h
        self.sets = {}
        for split, (images, joints) in self.raw.items():
            if joints is None:
                self.sets[split] = ProbeSet(images)
                continue
            if joints.shape[1] != heat.shape[1]:
                raise MonitorError(f"{split} joints have {joints.shape[1]} joints, the model predicts {heat.shape[1]}")
            weight = (joints[..., 2] > 0).float()
            target = gaussian_targets(joints[..., :2] / self.stride, weight, tuple(heat.shape[-2:]), self.sigma)
            self.sets[split] = ProbeSet(images, target, weight, joints[..., :2])
        x0 = self.raw["unlabeled"][0][:GALLERY]
        lo, hi = x0.amin((1, 2, 3), keepdim=True), x0.amax((1, 2, 3), keepdim=True)
        self.gallery_crops = (x0 - lo) / (hi - lo).clamp(min=1e-12) * 255  # for display only

    def due(self, step):
        return step % self.every == 0

    def __call__(self, step, force=False):
        """Probe at `step` when due (every `every` steps, or force); True once the detector has fired
        (with stop_on_collapse: the caller should stop)."""
        if not (force or self.due(step)):
            return self.collapsed is not None and self.stop_on_collapse
        t0 = time.perf_counter()
        if self.sets is None:
            x = self.raw["unlabeled"][0]
            with torch.no_grad():
                self._prepare(_predict(self.model, x), x)
        teachers = [self.teacher] if self.teacher is not None else None
        rows, self.histograms, gallery = probe_statistics(step, self.sets, [self.model], teachers, self.stride,
                                                          self.crop_height)
        self.rows += rows
        if gallery is not None:
            self.gallery.append(gallery)
        if "val" in self.sets:
            self.metrics.append(dict(step=step, split="val", name="PCK@0.1", value=self.pck(self.sets["val"])))
        self.seconds += time.perf_counter() - t0
        self.crops_probed += sum(len(s.x) for s in self.sets.values())
        if self.collapsed is None:
            self.collapsed, self.rule = detect(**detector_series(self.rows), ratio=self.collapse_ratio)
        self.save()
        return self.collapsed is not None and self.stop_on_collapse

    @torch.no_grad()
    def pck(self, s):
        xy, _ = decode(_predict(self.model, s.x))
        correct = ((xy * self.stride - s.points).norm(dim=-1) < 0.1 * self.crop_height) & (s.weight > 0)
        return float(correct.sum() / (s.weight > 0).sum().clamp(min=1))

    @property
    def collapse_index(self):
        """The latest probe's collapse index (unlabeled response over its running peak; NaN before a probe)."""
        _, responses = unlabeled_response(self.rows)
        return float(collapse_index(responses)[0][-1]) if responses else float("nan")

    def save(self, status="running", **extra):
        runs.atomic_write_parquet(self.run.file("probes.parquet"), pd.DataFrame(self.rows, columns=PROBE_COLUMNS))
        runs.atomic_write_parquet(self.run.file("metrics.parquet"), pd.DataFrame(
            self.metrics, columns=["step", "split", "name", "value"]))
        if self.gallery:
            write_gallery(self.run.file("gallery.npz"), self.gallery, self.stride, self.gallery_crops)
        steps = [r.step for r in self.rows]
        final = {m["name"]: m["value"] for m in self.metrics if m["step"] == max(steps)} if steps else {}
        self.run.update_manifest(status=status, final=final, steps=max(steps) if steps else 0,
                                 collapse_step=self.collapsed, timing=dict(
                                     probe=self.seconds, probe_ms_per_crop=1000 * self.seconds / max(self.crops_probed, 1)),
                                 **extra)

    def close(self):
        """The run's last word: status done, or collapsed (with the step the detector fired at)."""
        if self.collapsed is not None:
            self.save("collapsed", reason=f"collapsed since step {self.collapsed} ({self.rule})", finished=time.time())
        else:
            self.save("done", finished=time.time())


def _joints(joints, n, name, device):
    if joints is None:
        return None
    j = torch.as_tensor(joints, dtype=torch.float32)
    if j.dim() != 3 or j.shape[0] != n or j.shape[2] != 3:
        raise MonitorError(f"{name} must be (N,K,3) with N={n} (x, y in input pixels, visibility), got {tuple(j.shape)}")
    return j


def _device_of(model):
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")
